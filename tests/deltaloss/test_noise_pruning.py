"""End to end on the synthetic corpus: bootstrap proxies, score, prune; injected label noise goes first."""

from __future__ import annotations

import json

import pytest

from nvila_model.data.generate import GenerateConfig, run_generate
from nvila_model.data.manifest import conversation_text, read_manifest
from nvila_model.deltaloss.config import BootstrapConfig, PruneConfig, RayConfig, ScoreConfig
from nvila_model.deltaloss.prune import run_prune
from nvila_model.deltaloss.stage import run_score
from nvila_model.tokenizer import train_tokenizer

OFF = ("counting", "spatial", "text", "chart", "compare", "motion", "order", "flashes")


@pytest.mark.slow
def test_label_noise_is_pruned_before_clean_records(tmp_path):
    subsets = {name: {"enabled": False} for name in OFF}
    subsets.update(attributes={"train": 100, "noise": 0.25, "duplicate": 0.0})
    data = run_generate(GenerateConfig(out_dir=str(tmp_path / "raw"), subsets=subsets))
    records = read_manifest(data / "train.jsonl")
    train_tokenizer([conversation_text(r["conversations"]) for r in records], 400).save_pretrained(
        str(tmp_path / "tok"))
    cfg = ScoreConfig(manifest=str(data / "train.jsonl"), tokenizer_dir=str(tmp_path / "tok"),
                      out_dir=str(tmp_path / "scores"), ray=RayConfig(num_actors=0),
                      bootstrap=BootstrapConfig(small_preset="tiny", large_preset="tiny", share=1.0, small_steps=10,
                                                large_steps=100, out_dir=str(tmp_path / "scorers")))
    scores = run_score(cfg)
    run_prune(PruneConfig(scores=str(scores / "scores.parquet"), manifest=cfg.manifest,
                          out_dir=str(tmp_path / "pruned"), keep_ratios=[0.5]))
    summary = {(p["method"], p["keep_ratio"]): p for p in
               json.loads((tmp_path / "pruned" / "summary.json").read_text())["points"]}
    removed = summary[("deltaloss", 0.5)]["defects_removed_share"]["noise"]
    random_removed = summary[("random", 0.5)]["defects_removed_share"]["noise"]
    print(f"noise removed at keep 0.5: deltaloss {removed:.2f}, random {random_removed:.2f}")
    assert removed >= random_removed + 0.1 and removed > 0.5
    stats = json.loads((scores / "summary.json").read_text())["subsets"]["attributes"]
    assert stats["mean_score_noise"] < stats["mean_score_clean"]
