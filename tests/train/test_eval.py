"""Evaluation scoring: normalisation, exact match, per-subset accuracy beside chance, and a real eval run."""

import json

import pytest

from nvila_model.data.answers import exact_match, normalise
from nvila_model.evaluate import EvalConfig, paired_difference, run_eval, score_predictions
from tests.train.conftest import stage_params


def test_normalise_and_exact_match():
    assert normalise("  The Red. ") == "red"
    assert normalise("Three") == "3" and exact_match("three", "3")
    assert exact_match("Left!", "left") and not exact_match("left right", "left")


def test_score_known_predictions():
    rows = [{"subset": "colour", "prediction": "red", "answer": "red"},
            {"subset": "colour", "prediction": "blue", "answer": "red"},
            {"subset": "count", "prediction": "two", "answer": "2"},
            {"subset": "count", "prediction": "2", "answer": "2"},
            {"subset": "count", "prediction": "", "answer": "3"},
            {"subset": "count", "prediction": "4", "answer": "3"}]
    metrics = score_predictions(rows, chance={"colour": 0.25, "count": 0.25})
    assert metrics["acc_colour"] == 0.5 and metrics["acc_count"] == 0.5
    assert metrics["acc_mean"] == 0.5 and metrics["chance_mean"] == 0.25 and metrics["num_samples"] == 6


def _answers(subset: str, correct: list[int], start: int = 0) -> list[dict]:
    return [{"id": f"{subset}-{start + i}", "subset": subset, "correct": bool(c)} for i, c in enumerate(correct)]


def test_paired_difference_pairs_answers_by_id_and_gives_the_mean_over_subsets_with_its_error():
    # a: text 3/4, video 1/2; b: text 1/4, video 1/2 (a different video answer right)
    a = _answers("text", [1, 1, 1, 0]) + _answers("video", [1, 0])
    b = _answers("text", [0, 1, 0, 0]) + _answers("video", [0, 1])
    pair = paired_difference(a, list(reversed(b)))  # order does not matter: answers pair by id
    assert pair["diff"] == pytest.approx(((0.75 - 0.25) + (0.5 - 0.5)) / 2)
    # per-answer differences: text [1, 0, 1, 0] (mean 0.5, sample variance 1/3), video [1, -1] (mean 0, variance 2)
    assert pair["se"] == pytest.approx(((1 / 3) / 4 + 2 / 2) ** 0.5 / 2)
    assert (pair["paired"], pair["unpaired"]) == (6, 0)
    assert paired_difference(a, b, ["text"])["diff"] == pytest.approx(0.5)
    identical = paired_difference(a, a)
    assert (identical["diff"], identical["se"]) == (0.0, 0.0), "the same answers: no difference and no noise"
    # an answer only one model gave is left out, and counted
    assert paired_difference(a + _answers("text", [1], start=9), b)["unpaired"] == 1
    with pytest.raises(ValueError, match=r"no answer both models gave on subset\(s\) \['chart'\]"):
        paired_difference(a, b, ["text", "chart"])


def test_eval_run_writes_flat_metrics_and_predictions(project, corpus_dir):
    from nvila_model.params import load_params
    from nvila_model.train.config import StageConfig
    from nvila_model.train.stage import run_stage

    configs = load_params("params.yaml", keys=["model", "datasets"])
    data = corpus_dir / "data/raw/synth"
    out = run_stage("projector_init", StageConfig(**stage_params("projector_init", max_steps=2)), configs["model"],
                    configs["datasets"], data=data, out="runs/projector_init", tokenizer=corpus_dir / "runs/tokenizer")
    cfg = EvalConfig(limit_per_subset=2, efficiency_samples=1, decode_tokens=4)
    metrics = run_eval(cfg, configs["datasets"], data=data, checkpoint=out, out="runs/eval")
    saved = json.loads((out.parent / "eval/metrics.json").read_text())
    assert all(isinstance(v, int | float) for v in saved.values())
    assert saved["num_samples"] == 18 and 0 <= saved["acc_mean"] <= 1 and saved["chance_text"] == pytest.approx(0.125)
    assert metrics["visual_tokens_per_sample"] > 0 and metrics["decode_tokens_per_s"] > 0
    rows = [json.loads(line) for line in (out.parent / "eval/predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and {"id", "subset", "prediction", "answer", "correct"} <= set(rows[0])
