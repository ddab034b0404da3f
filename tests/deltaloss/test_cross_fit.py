"""Cross-fitted bootstrap scoring (`score.bootstrap.folds`): no record is scored by a proxy that trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nvila_model.deltaloss.bootstrap import fold_plan
from nvila_model.deltaloss.config import BootstrapConfig, RayConfig, ScoreConfig


def test_folds_partition_the_records_and_train_on_the_rest() -> None:
    plan = fold_plan(23, 3, seed=5)
    assert len(plan) == 3
    scored = np.concatenate([s for _, s in plan])
    assert sorted(scored.tolist()) == list(range(23)), "every record is scored exactly once"
    for train, score in plan:
        assert not set(train) & set(score) and len(train) + len(score) == 23
        assert len(score) in (7, 8)
    again = fold_plan(23, 3, seed=5)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(plan, again, strict=True)), "seeded"
    assert not np.array_equal(fold_plan(23, 3, seed=6)[0][1], plan[0][1])
    (train, score), = fold_plan(5, 1, seed=0)
    assert train.tolist() == score.tolist() == list(range(5)), "one fold: the standard bootstrap"
    with pytest.raises(ValueError, match="3 folds need at least 3 records"):
        fold_plan(2, 3, seed=0)
    with pytest.raises(ValueError):
        BootstrapConfig(folds=0)


def test_each_fold_is_scored_by_proxies_trained_on_the_other_folds(colour_corpus, tokenizer, tmp_path,
                                                                  monkeypatch) -> None:
    import nvila_model.deltaloss.bootstrap as bootstrap
    import nvila_model.deltaloss.stage as stage

    tokenizer.save_pretrained(str(tmp_path / "tok"))
    trained_on, scored_by = {}, {}
    real_bootstrap, real_rows = bootstrap.bootstrap_scorers, stage.score_rows

    def spy_bootstrap(cfg, records, media_root, tokenizer_dir, out, seed):
        small, large = real_bootstrap(cfg, records, media_root, tokenizer_dir, out, seed)
        trained_on[str(large)] = {r["id"] for r in records}
        return small, large

    def spy_rows(pair, records, cfg):
        scored_by[pair.large.args[0]] = {r["id"] for r in records}
        return real_rows(pair, records, cfg)

    monkeypatch.setattr(bootstrap, "bootstrap_scorers", spy_bootstrap)
    monkeypatch.setattr(stage, "score_rows", spy_rows)
    proxies = BootstrapConfig(small_preset="tiny", large_preset="tiny", share=1.0, small_steps=1, large_steps=1,
                              batch_size=2, folds=2)
    cfg = ScoreConfig(ray=RayConfig(num_actors=0), bootstrap=proxies)
    out = stage.run_score(cfg, data=colour_corpus, out=tmp_path / "scores", scorers=tmp_path / "scorers",
                          tokenizer=tmp_path / "tok")

    assert len(trained_on) == 2 and trained_on.keys() == scored_by.keys()
    for large, ids in scored_by.items():
        assert ids and not ids & trained_on[large], f"{large} scored records it trained on"
    assert set().union(*scored_by.values()) == {"fit", "c1", "c2", "c3", "c4", "c5"}
    used = json.loads((tmp_path / "scorers" / "scorers.json").read_text())
    assert [f["large"].rsplit("/", 2)[-2] for f in used["folds"]] == ["fold-0", "fold-1"]
    for path in [f[role] for f in used["folds"] for role in ("small", "large")]:
        layout = json.loads((Path(path) / "meta.json").read_text())["batch_layout"]
        assert layout.startswith("one packed row per micro-batch"), f"{path}: packed as the stages, got {layout}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == 2 and summary["num_records"] == 6


def test_large_proxy_aligns_the_vision_path_before_the_llm_learns_answers(colour_corpus, tokenizer,
                                                                          tmp_path) -> None:
    """`large_align_steps`: projector alone, then vision tower + projector, on the image records with the LLM frozen;
    only then every module, on every record, at the vision tower's lower LR."""
    from safetensors.torch import load_file

    from nvila_model.data.manifest import read_manifest
    from nvila_model.deltaloss.bootstrap import train_proxy

    tokenizer.save_pretrained(str(tmp_path / "tok"))
    text_only = {"id": "t", "subset": "colour", "conversations": [
        {"from": "human", "value": "Which colour comes first?"}, {"from": "gpt", "value": "red"}]}
    records = read_manifest(colour_corpus / "train.jsonl") + [text_only]
    out = train_proxy("tiny", tmp_path / "tok", records, colour_corpus, steps=2, batch_size=2, lr=0.01, seed=0,
                      out=tmp_path / "large", align_steps=4, vision_lr_ratio=0.1)
    assert out == tmp_path / "large"
    phases = [tmp_path / "large-align-projector", tmp_path / "large-align-vision", out]
    weights = [load_file(str(path / "model.safetensors")) for path in phases]

    def same(a: dict, b: dict, module: str) -> bool:
        keys = [k for k in a if k.startswith(module)]
        assert keys, module
        return all(torch.equal(a[k], b[k]) for k in keys)

    assert same(weights[0], weights[1], "language_model") and not same(weights[0], weights[1], "vision_tower")
    assert not same(weights[0], weights[1], "projector")
    assert not same(weights[1], weights[2], "language_model"), "then the LLM trains"
    metas = [json.loads((path / "meta.json").read_text()) for path in phases]
    assert [m["global_steps"] for m in metas] == [2, 2, 2]
    assert [m["num_train_records"] for m in metas] == [6, 6, 7], "alignment on the image records only"
    assert [sorted(k for k, count in m["trainable_params"].items() if count) for m in metas] == [
        ["projector"], ["projector", "vision_tower"], ["language_model", "projector", "vision_tower"]]
    lr = json.loads((out / "manifest.json").read_text())["config"]["lr"]
    assert lr == {"vision_tower": pytest.approx(0.001), "projector": 0.01, "language_model": 0.01}
