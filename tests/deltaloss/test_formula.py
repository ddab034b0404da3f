"""DeltaLoss arithmetic checked against hand-computed log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch
from toy_models import BigramScorer, memorizer, uniform

from nvila_model.deltaloss.formula import IGNORE_INDEX, delta_score, mean_answer_logprob, token_logprobs
from nvila_model.deltaloss.scorer import score_batch


def test_token_logprobs_shift_and_mask():
    # vocab 3; logits at position t predict label t+1.
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    logits_BLV = probs.log().unsqueeze(0)  # positions 0..2
    labels_BL = torch.tensor([[IGNORE_INDEX, 1, 2]])
    logp_BT, mask_BT = token_logprobs(logits_BLV, labels_BL)
    assert mask_BT.tolist() == [[True, True]]
    assert logp_BT[0].tolist() == pytest.approx([math.log(0.25), math.log(0.1)])


def test_mean_is_over_answer_tokens_only_and_nan_without_answer():
    logits_BLV = torch.zeros(2, 4, 5)  # uniform over 5
    labels_BL = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4], [IGNORE_INDEX] * 4])
    mean_B, num_B = mean_answer_logprob(logits_BLV, labels_BL)
    assert num_B.tolist() == [2, 0]
    assert mean_B[0].item() == pytest.approx(math.log(1 / 5))
    assert math.isnan(mean_B[1].item())
    assert math.isnan(delta_score(float("nan"), -1.0))


def test_misaligned_inputs_raise():
    with pytest.raises(ValueError, match="do not align"):
        token_logprobs(torch.zeros(1, 4, 3), torch.zeros(1, 5, dtype=torch.long))


def test_hand_computable_score_with_two_fixed_models():
    # Tokens 0 -> 1 -> 2 -> 1 with prompt [0]: answer tokens are 1, 2, 1 predicted from 0, 1, 2.
    record = {"id": "a", "subset": "s", "tokens": [0, 1, 2, 1], "num_prompt": 1}
    large_probs = [[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.25, 0.5, 0.25]]
    small = BigramScorer(uniform(3))
    large = BigramScorer(large_probs)
    [row] = score_batch(small, large, [record])
    expected_large = (math.log(0.6) + math.log(0.6) + math.log(0.5)) / 3
    expected_small = math.log(1 / 3)
    assert row["logp_large"] == pytest.approx(expected_large)
    assert row["logp_small"] == pytest.approx(expected_small)
    assert row["score"] == pytest.approx(expected_large - expected_small)  # = 0.0492...
    assert row["num_tokens"] == 3


def test_sample_fitted_by_large_only_scores_positive():
    fitted = [0, 3, 1, 2]
    small, large = BigramScorer(uniform(4)), BigramScorer(memorizer(4, fitted))
    rows = score_batch(small, large, [{"id": "x", "tokens": fitted, "num_prompt": 1},
                                      {"id": "y", "tokens": [0, 0, 0, 0], "num_prompt": 1}])
    assert rows[0]["score"] > 1.0
    assert rows[1]["score"] < 0  # the memorizer is worse than uniform on what it did not fit
