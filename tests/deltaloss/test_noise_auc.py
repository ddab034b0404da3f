"""The score stage's noise AUCs: how well a low score, and a low large-scorer likelihood, find wrong answers."""

from __future__ import annotations

import pandas as pd
import pytest

from nvila_model.deltaloss.stage import noise_auc, subset_stats


def _scores(defects: list[str | None], score: list[float], logp_large: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(defects))], "subset": ["a"] * len(defects),
                         "logp_small": -1.0, "logp_large": logp_large, "score": score, "num_tokens": 1,
                         "defect": defects})


def test_noise_auc_ranks_noisy_records_by_their_low_scores() -> None:
    defects = ["noise", None, "duplicate", "noise", None]
    table = _scores(defects, score=[-3.0, 1.0, 2.0, -1.0, 0.5], logp_large=[-0.1, -2.0, -0.5, -3.0, -1.0])
    auc = noise_auc(table)
    assert auc["score"] == 1.0, "both noisy records score below the three others; a duplicate is not noise"
    assert auc["large"] == pytest.approx(0.5), "one noisy record is the most likely, one the least"
    assert subset_stats(table)["a"]["noise_auc_score"] == 1.0
    inverted = noise_auc(table.assign(score=-table["score"]))
    assert inverted["score"] == 0.0


def test_noise_auc_skips_unscored_records_and_untagged_data() -> None:
    table = _scores(["noise", None, None], score=[-1.0, float("nan"), 1.0], logp_large=[-1.0, -1.0, -0.5])
    assert noise_auc(table) == {"score": 1.0, "large": 1.0}
    assert noise_auc(table.assign(defect=None)) == {}, "real data has no defect tags"
    assert noise_auc(table.assign(defect="noise")) == {}
    assert "noise_auc_score" not in subset_stats(table.assign(defect=None))["a"]
