"""Scoring real (tiny) NVILA checkpoints: a sample the large model has fitted scores positive and is kept."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from nvila_model.data.manifest import read_manifest
from nvila_model.deltaloss.checkpoint_scorer import CheckpointScorer
from nvila_model.deltaloss.config import PruneConfig, RayConfig, ScoreConfig
from nvila_model.deltaloss.formula import mean_answer_logprob
from nvila_model.deltaloss.prune import run_prune
from nvila_model.deltaloss.stage import run_score


def _score(root, out, **kw):
    cfg = ScoreConfig(small_checkpoint=str(root / "small"), large_checkpoint=str(root / "large"), batch_size=4,
                      micro_batch_size=3, ray=RayConfig(num_actors=0), **kw)
    return run_score(cfg, data=root, out=out, scorers=out.parent / "scorers", tokenizer=root)


def test_batched_scorer_matches_one_sample_forward(colour_corpus, processor):
    records = read_manifest(colour_corpus / "train.jsonl")
    scorer = CheckpointScorer(colour_corpus / "large", colour_corpus, micro_batch_size=4)
    records[1]["conversations"][1]["value"] += " and a longer answer"  # lengths differ
    rows = []  # the token rows the model sees: one per micro-batch, its records back to back, no padding
    embed = scorer.model.embed
    scorer.model.embed = lambda input_ids, *media: rows.append(tuple(input_ids.shape)) or embed(input_ids, *media)
    means, counts = scorer.mean_logprobs(records)
    assert scorer.attention == "sdpa_varlen"
    lengths = [scorer.encode(r)["input_ids"].shape[0] for r in records]
    assert rows == [(1, sum(lengths[:4])), (1, sum(lengths[4:]))]
    for i, record in enumerate(records):  # the model's full logits, one sample per forward
        sample = scorer.encode(record)
        with torch.inference_mode():
            logits = scorer.model(input_ids=sample["input_ids"][None], pixel_values=sample["pixel_values"],
                                  media_layout=sample["media_layout"]).logits
        single, num = mean_answer_logprob(logits, sample["labels"][None])
        assert counts[i] == num.item(), record["id"]
        assert means[i] == pytest.approx(single.item(), abs=1e-5), record["id"]
    assert counts[3] == 2  # the answer word and <|im_end|>
    assert counts[1] > 2


def test_fitted_sample_scores_positive_and_is_kept(colour_corpus, tmp_path):
    out = _score(colour_corpus, tmp_path / "scores")
    scores = pd.read_parquet(out / "scores.parquet").set_index("id")
    assert list(scores.columns) == ["subset", "logp_small", "logp_large", "score", "num_tokens", "defect"]
    assert scores.loc["fit", "score"] > 1.0
    assert scores["score"].idxmax() == "fit"
    assert np.allclose(scores["score"], scores["logp_large"] - scores["logp_small"])
    assert {p.name for p in out.glob("hist-*.png")} == {"hist-colour.png", "hist-shape.png"}
    assert json.loads((out / "manifest.json").read_text())["stage"] == "score"
    pruned = run_prune(PruneConfig(keep_ratio=0.5), data=colour_corpus, scores=out, out=tmp_path / "pruned")
    kept = [r["id"] for r in read_manifest(pruned / "train.jsonl")]
    assert "fit" in kept and len(kept) == 4  # colour: 2 of 3, shape: 2 of 3


def test_unloadable_record_keeps_its_row_with_nan(colour_corpus, tmp_path):
    records = read_manifest(colour_corpus / "train.jsonl")
    records[2]["image"] = "missing.png"
    scorer = CheckpointScorer(colour_corpus / "small", colour_corpus, micro_batch_size=4)
    means, counts = scorer.mean_logprobs(records)
    assert np.isnan(means[2]) and counts[2] == 0 and not np.isnan(means[[0, 1, 3]]).any()


def test_bad_config_raises(colour_corpus, tmp_path):
    with pytest.raises(ValueError, match="both small_checkpoint and large_checkpoint"):
        ScoreConfig(small_checkpoint="x")
    with pytest.raises(ValueError, match="not an NVILA checkpoint"):
        CheckpointScorer(tmp_path, colour_corpus)
