"""Per-subset pruning: ratios per subset, protected subsets whole, seeded determinism, outputs on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nvila_model.data.manifest import default_media_root, media_paths, read_manifest, write_jsonl
from nvila_model.deltaloss.config import PruneConfig
from nvila_model.deltaloss.prune import keep_count, run_prune, select

SIZES = {"color": 37, "count": 20, "ocr": 9}


def _scores(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"id": f"{s}-{i:03d}", "subset": s, "score": float(rng.normal())}
            for s, n in SIZES.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_keep_count_rounds_half_up_and_keeps_one():
    assert [keep_count(n, 0.5) for n in (0, 1, 3, 9, 10)] == [0, 1, 2, 5, 5]
    assert keep_count(37, 0.7) == 26 and keep_count(20, 1.0) == 20


@pytest.mark.parametrize("ratio", [0.9, 0.7, 0.5])
def test_per_subset_ratios_and_top_scores(ratio):
    scores = _scores()
    kept = select(scores, "deltaloss", ratio, protected=[], seed=0)
    for subset, group in scores.groupby("subset"):
        mine = group[group["id"].isin(kept)]
        assert len(mine) == keep_count(SIZES[subset], ratio)
        dropped = group[~group["id"].isin(kept)]
        assert dropped.empty or mine["score"].min() >= dropped["score"].max()


def test_protected_subset_kept_whole_and_lower_ratios_nest():
    scores = _scores()
    for method in ("deltaloss", "random"):
        k5 = select(scores, method, 0.5, protected=["ocr"], seed=3)
        k7 = select(scores, method, 0.7, protected=["ocr"], seed=3)
        assert set(scores.loc[scores["subset"] == "ocr", "id"]) <= k5
        assert k5 <= k7


def test_nan_scores_are_pruned_first():
    scores = _scores()
    scores.loc[scores["id"] == "count-000", "score"] = float("nan")
    scores.loc[scores["id"] == "count-001", "score"] = 99.0
    kept = select(scores, "deltaloss", 0.5, protected=[], seed=0)
    assert "count-001" in kept and "count-000" not in kept


def test_random_baseline_is_seeded():
    scores = _scores()
    a, b = (select(scores, "random", 0.5, [], seed=7) for _ in range(2))
    assert a == b
    assert a != select(scores, "random", 0.5, [], seed=8)
    assert a != select(scores, "deltaloss", 0.5, [], seed=7)


def _corpus(tmp_path: Path) -> dict[str, Path]:
    """A validated corpus folder and a score folder for it: the prune stage's inputs."""
    scores = _scores()
    records = [{"id": i, "subset": s, "image": f"images/{i}.png", "conversations": []}
               for i, s in zip(scores["id"], scores["subset"], strict=True)]
    records[0]["defect"] = "noise"
    scores.loc[0, "score"] = -50.0
    write_jsonl(records, tmp_path / "validated" / "train.jsonl")
    (tmp_path / "scores").mkdir()
    scores.to_parquet(tmp_path / "scores" / "scores.parquet")
    return {"data": tmp_path / "validated", "scores": tmp_path / "scores"}


def test_run_prune_writes_the_subset_deterministically(tmp_path):
    inputs = _corpus(tmp_path)
    cfg = PruneConfig(keep_ratio=0.5, protected_subsets=["ocr"])
    random_a = run_prune(PruneConfig(keep_ratio=0.5, method="random"), **inputs, out=tmp_path / "r")
    first = (random_a / "train.jsonl").read_text()
    assert (run_prune(PruneConfig(keep_ratio=0.5, method="random"), **inputs, out=tmp_path / "r") / "train.jsonl"
            ).read_text() == first
    point = run_prune(cfg, **inputs, out=tmp_path / "pruned")
    summary = json.loads((point / "summary.json").read_text())
    assert summary["subsets"]["ocr"] == {"total": 9, "kept": 9}
    assert summary["subsets"]["color"] == {"total": 37, "kept": 19}
    assert summary["defects_removed_share"] == {"noise": 1.0}
    assert json.loads((point / "manifest.json").read_text())["stage"] == "prune"
    kept = read_manifest(point / "train.jsonl")
    assert len(kept) == summary["num_kept"] == 19 + 10 + 9
    [media] = media_paths(kept[0], default_media_root(point / "train.jsonl"))
    assert media.resolve() == (tmp_path / "validated" / "images" / f"{kept[0]['id']}.png")
    lower = run_prune(PruneConfig(keep_ratio=0.3, protected_subsets=["ocr"]), **inputs, out=tmp_path / "lower")
    assert {r["id"] for r in read_manifest(lower / "train.jsonl")} < {r["id"] for r in kept}


def test_bad_inputs_raise(tmp_path):
    inputs = _corpus(tmp_path)
    with pytest.raises(ValueError, match="Input should be 'deltaloss' or 'random'"):
        PruneConfig(method="loss")
    with pytest.raises(ValueError, match="no such subset"):
        run_prune(PruneConfig(protected_subsets=["video"]), **inputs, out=tmp_path / "p")
    table = inputs["scores"] / "scores.parquet"
    pd.read_parquet(table).iloc[:-1].to_parquet(table)
    with pytest.raises(ValueError, match="1 manifest ids unscored"):
        run_prune(PruneConfig(), **inputs, out=tmp_path / "p")
    assert not (tmp_path / "p").exists()


def _answer_skewed_scores() -> tuple[pd.DataFrame, dict[str, str]]:
    """One subset of 40 records, half answering "yes", half "no"; the score favours every "yes" over every "no" (as a
    score driven by the scorers' answer prior does)."""
    rows, answers = [], {}
    for i in range(40):
        answer = "yes" if i % 2 else "no"
        rows.append({"id": f"q-{i:03d}", "subset": "q", "score": (10.0 if answer == "yes" else 0.0) + i / 100})
        answers[f"q-{i:03d}"] = answer
    return pd.DataFrame(rows), answers


def test_balance_answers_keeps_each_answers_share_and_its_best_records():
    scores, answers = _answer_skewed_scores()
    plain = select(scores, "deltaloss", 0.5, protected=[], seed=0)
    assert {answers[i] for i in plain} == {"yes"}, "per-subset ranking keeps only the favoured answer"
    balanced = select(scores, "deltaloss", 0.5, protected=[], seed=0, answers=answers)
    assert sorted(answers[i] for i in balanced).count("no") == 10 == sorted(answers[i] for i in balanced).count("yes")
    for answer in ("yes", "no"):  # within an answer, the score still chooses
        mine = scores[scores["id"].map(answers) == answer]
        kept = mine[mine["id"].isin(balanced)]
        assert kept["score"].min() > mine[~mine["id"].isin(balanced)]["score"].max()
    assert select(scores, "deltaloss", 0.3, [], 0, answers) <= balanced, "lower ratios nest"


def test_run_prune_balances_answers_and_reports_their_entropy(tmp_path):
    scores, answers = _answer_skewed_scores()
    (tmp_path / "validated").mkdir()
    write_jsonl([{"id": i, "subset": "q", "conversations": [{"from": "human", "value": "?"},
                                                            {"from": "gpt", "value": f" {a.upper()} "}]}
                 for i, a in answers.items()], tmp_path / "validated" / "train.jsonl")
    (tmp_path / "scores").mkdir()
    scores.to_parquet(tmp_path / "scores" / "scores.parquet")
    inputs = {"data": tmp_path / "validated", "scores": tmp_path / "scores"}
    skewed = json.loads((run_prune(PruneConfig(keep_ratio=0.5), **inputs, out=tmp_path / "a") / "summary.json"
                         ).read_text())["answer_entropy"]["q"]
    assert skewed == {"all": pytest.approx(np.log(2), abs=1e-4), "kept": 0.0}
    point = run_prune(PruneConfig(keep_ratio=0.5, balance_answers=True), **inputs, out=tmp_path / "b")
    assert json.loads((point / "summary.json").read_text())["answer_entropy"]["q"]["kept"] == pytest.approx(
        np.log(2), abs=1e-4)
    assert len(read_manifest(point / "train.jsonl")) == 20
