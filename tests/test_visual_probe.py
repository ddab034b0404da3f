"""bench/visual_probe.py: the frontier variants' models as the frontier defines them, and a probe that reads from the
pooled visual tokens what they carry (a colour) and nothing when the answers are shuffled."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from bench.visual_probe import corpus_params, pooled_tokens, probe_accuracy, probe_records, variant_model
from nvila_model.tokenizer import load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def params() -> dict:
    return corpus_params(standard=False)


@pytest.fixture(scope="module")
def tokenizer(params: dict):
    records = probe_records(params["generate"], "attributes", "val", 20, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer([t["value"] for r in records for t in r["conversations"]], 512).save_pretrained(tmp)
        return load_tokenizer(tmp)


def test_each_variant_is_built_with_the_frontiers_model_settings(params: dict, tokenizer) -> None:
    fixed, _ = variant_model("fixed_uncompressed", False, tokenizer, None, seed=0)
    nvila, _ = variant_model("nvila", False, tokenizer, None, seed=0)
    assert (fixed.config.projector, fixed.config.dynamic_s2) == ("none", False)
    assert (nvila.config.projector, nvila.config.dynamic_s2) == ("mlp_downsample", True)


def test_the_probe_reads_a_colour_from_pooled_tokens_and_nothing_from_shuffled_answers(params: dict,
                                                                                      tokenizer) -> None:
    model, processor = variant_model("nvila", False, tokenizer, None, seed=0)
    splits = {}
    for split, count in (("val", 160), ("test", 80)):
        recs = [r for r in probe_records(params["generate"], "attributes", split, count, seed=0)
                if r["qtypes"][0] == "colour"]
        splits[split] = (pooled_tokens(model, processor, [r["scene"] for r in recs], "attributes"),
                         [r["conversations"][1]["value"] for r in recs])
    (fit_X, fit_y), (score_X, score_y) = splits["val"], splits["test"]
    assert len(set(score_y)) == 6 and len(score_y) >= 30
    assert probe_accuracy(fit_X, fit_y, score_X, score_y) >= 0.9
    shuffled = list(np.random.default_rng(0).permutation(fit_y))
    assert probe_accuracy(fit_X, shuffled, score_X, score_y) <= 0.4  # chance is 1/6
