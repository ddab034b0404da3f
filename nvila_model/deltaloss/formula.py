"""DeltaLoss arithmetic: per-token answer log-likelihoods from logits, their mean, and the large-minus-small score."""

from __future__ import annotations

import math

import torch

from nvila_model.config import IGNORE_INDEX


def token_logprobs(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log p(label_t | tokens_<t) for every supervised position, HF causal-LM alignment.

    The logits at position t predict the token at t + 1, so logits are shifted left against labels (as in
    the loss of a Hugging Face causal LM). Returns `(logp_BT, mask_BT)` with T = L - 1; positions whose label
    is `IGNORE_INDEX` have mask False and logp 0.
    """
    if logits_BLV.dim() != 3 or labels_BL.dim() != 2 or logits_BLV.shape[:2] != labels_BL.shape:
        raise ValueError(f"logits {tuple(logits_BLV.shape)} and labels {tuple(labels_BL.shape)} do not align")
    logits_BTV = logits_BLV[:, :-1].float()
    labels_BT = labels_BL[:, 1:]
    mask_BT = labels_BT != IGNORE_INDEX
    safe_labels_BT = labels_BT.masked_fill(~mask_BT, 0)
    logp_BTV = torch.log_softmax(logits_BTV, dim=-1)
    logp_BT = logp_BTV.gather(-1, safe_labels_BT.unsqueeze(-1)).squeeze(-1)
    return logp_BT.masked_fill(~mask_BT, 0.0), mask_BT


def mean_answer_logprob(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean log-likelihood over each sample's answer tokens, and the number K of those tokens.

    Returns `(mean_logp_B, num_tokens_B)`; a sample without supervised tokens gets NaN (it cannot be scored,
    and pruning ranks it last).
    """
    logp_BT, mask_BT = token_logprobs(logits_BLV, labels_BL)
    return _row_means(logp_BT[mask_BT], mask_BT)


def supervised_mean_logprob(logits_TV: torch.Tensor, targets_T: torch.Tensor,
                            supervised_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`mean_answer_logprob` from the logits at the supervised positions only (`supervised_logits` of the model):
    `logits_TV` row t predicts `targets_T[t]`, and the rows follow `supervised_BL` (True where a position predicts a
    label) in row-major order."""
    logp_T = torch.log_softmax(logits_TV.float(), dim=-1).gather(-1, targets_T.unsqueeze(-1)).squeeze(-1)
    return _row_means(logp_T, supervised_BL)


def _row_means(logp_T: torch.Tensor, mask_BX: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of each row's values, their count): `logp_T` holds the values at the True positions of `mask_BX` in
    row-major order; a row without any is NaN."""
    num_tokens_B = mask_BX.sum(dim=1)
    sum_B = logp_T.new_zeros(mask_BX.shape[0]).index_add_(0, mask_BX.nonzero()[:, 0], logp_T)
    mean_B = (sum_B / num_tokens_B.clamp(min=1)).masked_fill(num_tokens_B == 0, float("nan"))
    return mean_B, num_tokens_B


def delta_score(mean_logp_large: float, mean_logp_small: float) -> float:
    """score(x) = mean_i log p_large(y_i) - mean_i log p_small(y_i) = small cross-entropy - large cross-entropy.

    Positive: the large model has learned the sample and the small one has not (helpful); near zero: easy or
    hopeless for both; negative: the small model fits it and the large one does not (distracting, or noise).
    """
    if math.isnan(mean_logp_large) or math.isnan(mean_logp_small):
        return float("nan")
    return float(mean_logp_large) - float(mean_logp_small)
