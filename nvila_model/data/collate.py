"""Batch collators: right padding with an attention mask, and sequence packing into one row with varlen boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nvila_model.config import IGNORE_INDEX

FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")  # transformers' FlashAttentionKwargs


def _present(samples: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Drop the `None`s that `LlavaDataset` yields for records it could not load."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise ValueError(f"all {len(samples)} samples of this batch failed to load (see the warnings above)")
    return kept


def _media(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "media_layout": torch.cat([s["media_layout"] for s in samples]).reshape(-1, 4)}


@dataclass
class PaddingCollator:
    """One sample per row, padded on the right: pad id in `input_ids`, -100 in `labels`, 0 in `attention_mask`."""

    pad_id: int

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        samples = _present(samples)
        longest = max(s["input_ids"].shape[0] for s in samples)
        input_ids_BL = torch.full((len(samples), longest), self.pad_id, dtype=torch.long)
        labels_BL = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask_BL = torch.zeros((len(samples), longest), dtype=torch.long)
        for b, s in enumerate(samples):
            n = s["input_ids"].shape[0]
            input_ids_BL[b, :n], labels_BL[b, :n], attention_mask_BL[b, :n] = s["input_ids"], s["labels"], 1
        return {"input_ids": input_ids_BL, "labels": labels_BL, "attention_mask": attention_mask_BL,
                **_media(samples), "sample_lengths": attention_mask_BL.sum(1),
                "sample_starts": torch.arange(len(samples)) * longest, "ids": [s.get("id") for s in samples]}


class PackingCollator:
    """Pack a micro-batch into ONE row, samples back to back, with their boundaries for varlen attention.

    Returns `input_ids`, `labels`, `position_ids` [1, T] (positions restart at 0 for every sample),
    `attention_mask=None`, media in sample order, `sample_lengths`, `sample_starts` (offsets in the row) [N], `ids`,
    and the boundaries as transformers' `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` gives them:
    `cu_seq_lens_q/k` int32 [N + 1] and `max_length_q/k`. No token is padding.

    Attention never crosses samples: both kernels the trainer takes read the boundaries, flash-attn's varlen kernel
    on a GPU with flash-attn and `sdpa_varlen` (one causal SDPA call per sample, nvila_model/attention.py)
    everywhere else; neither builds a mask. One row is what flash-attn needs: transformers reads packed boundaries
    from `position_ids` only when the batch has one row (`modeling_flash_attention_utils._is_packed_sequence`).
    """

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        samples = _present(samples)
        lengths = [s["input_ids"].shape[0] for s in samples]
        labels = []
        for s in samples:
            sample_labels = s["labels"].clone()
            sample_labels[0] = IGNORE_INDEX  # never a target across a sample boundary
            labels.append(sample_labels)
        cu_seq_lens = F.pad(torch.tensor(lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
        return {"input_ids": torch.cat([s["input_ids"] for s in samples])[None], "labels": torch.cat(labels)[None],
                "position_ids": torch.cat([torch.arange(n) for n in lengths])[None], "attention_mask": None,
                **_media(samples), "sample_lengths": torch.tensor(lengths), "sample_starts": cu_seq_lens[:-1].long(),
                "ids": [s.get("id") for s in samples], "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
                "max_length_q": max(lengths), "max_length_k": max(lengths)}


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of a collated batch that `NVILAForConditionalGeneration.forward` takes."""
    keys = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values", "media_layout",
            *FLASH_KWARGS)
    return {k: batch[k] for k in keys if k in batch}


def sample_index(batch: dict[str, Any]) -> torch.Tensor:
    """Which sample [L] each position of a packed row belongs to (samples in batch order)."""
    lengths = batch["sample_lengths"]
    return torch.repeat_interleave(torch.arange(len(lengths)), lengths)


def per_sample_losses(logits_RLV: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample [N] of a packed or padded batch (samples in batch order).

    Targets are shifted within each sample only, so packed and one-by-one runs are comparable.
    """
    losses = []
    flat_logits, flat_labels = logits_RLV.reshape(-1, logits_RLV.shape[-1]), batch["labels"].reshape(-1)
    for start, n in zip(batch["sample_starts"].tolist(), batch["sample_lengths"].tolist(), strict=True):
        logits, labels = flat_logits[start:start + n - 1], flat_labels[start + 1:start + n]
        losses.append(F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX))
    return torch.stack(losses)
