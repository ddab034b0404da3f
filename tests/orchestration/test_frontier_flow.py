"""End to end: the frontier flow with `--quick`, shrunk further (a handful of steps, two variants), under the
Prefect test harness.

Each variant is a pipeline run (a DVC experiment) in MLflow experiment `nvila-frontier`; the reference runs first,
the peer trains for as many steps as it took and restores the reference's corpus from DVC's cache; the report lands
in files, an MLflow summary run and a Prefect artifact. (That a pruning point restores the pre-training stages and
trains fewer steps is the sweep flow's test; the frontier runs its variants through the same pipeline flow.)
"""

from __future__ import annotations

import json
import os

import pytest

from tests.orchestration.conftest import git_project, point_env_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
TINY = {"generate.scale": 0.05, "eval.limit_per_subset": 2, "eval.efficiency_samples": 1,
        "score.bootstrap": {"small_preset": "tiny", "large_preset": "tiny", "folds": 2, "share": 1.0,
                            "small_steps": 1, "large_steps": 1, "batch_size": 4},
        **{f"{stage}.max_steps": 2 for stage in ("projector_init", "vision_pretrain", "token_pretrain")},
        **{f"{stage}.{key}": value for stage in ("projector_init", "vision_pretrain", "token_pretrain", "image_sft",
                                                 "video_sft", "peer")
           for key, value in (("logging_steps", 1), ("save_steps", 2), ("batch_size", 8))},
        "image_sft.epochs": 0.1, "video_sft.epochs": 0.1}
VARIANTS = ["peer", "nvila"]


def test_frontier_quick_flow_tiny(tmp_path, monkeypatch, prefect_server, latest_artifact) -> None:
    from mlflow.tracking import MlflowClient

    from flows.frontier import efficient_frontier

    root = git_project(tmp_path / "project")
    point_env_at(monkeypatch, root)
    report = efficient_frontier(variants=VARIANTS, quick=True, overrides=TINY, report_dir=str(tmp_path / "r"))
    artifact = latest_artifact("nvila-frontier")

    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["nvila", "peer"], "the reference first, then table order"
    assert rows["peer"]["train_steps"] == rows["nvila"]["train_steps"] > 0, "the peer's steps match the reference's"
    for row in rows.values():
        assert 0 <= row["acc_mean"] <= 1 and row["chance_mean"] > 0 and row["prefill_ms"] > 0
        assert row["visual_tokens_per_sample"] > 0 and row["experiment"]
    assert rows["peer"]["video_frames"] == 8 and (rows["nvila"]["video_frames"], rows["nvila"]["video_pool"]) == (32, 4)
    goals = {g["goal"]: g for g in report["goals"]}
    at_chance = all(rows[v]["acc_mean"] <= rows[v]["chance_mean"] for v in ("nvila", "peer"))
    assert (goals["peer"]["held"] is None) == at_chance, "judged only when a compared model beats chance"
    assert "peer" in goals["peer"]["numbers"] and goals["deltaloss"]["held"] is None

    out = tmp_path / "r"
    saved = json.loads((out / "frontier.json").read_text())
    assert saved["mode"] == "quick" and [r["variant"] for r in saved["rows"]] == list(rows)
    assert saved["settings"]["generate.scale"] == 0.05 and saved["wall_seconds"] > 0
    assert "| **peer** |" in (out / "frontier.md").read_text() and (out / "frontier.png").stat().st_size > 20_000

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("nvila-frontier")
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'pipeline'")
    assert sorted(r.data.tags["frontier.variant"] for r in runs) == sorted(VARIANTS)
    peer_run = next(r for r in runs if r.data.tags["frontier.variant"] == "peer")
    stages = {r.info.run_name: r.data.tags["cached"] for r in client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{peer_run.info.run_id}'")}
    assert stages["generate"] == "true" and stages["peer@llava"] == "false"
    summary = client.search_runs([experiment.experiment_id], "tags.kind = 'frontier'")
    assert len(summary) == 1 and summary[0].info.run_id == report["mlflow_run_id"]
    assert summary[0].data.metrics["peer.acc_mean"] == pytest.approx(rows["peer"]["acc_mean"])
    assert rows["nvila"]["noise_removed"] == 0.0, "the corpus's injected noise, all kept at keep ratio 1"
    assert summary[0].data.metrics["nvila.noise_removed"] == 0.0
    logged = {a.path for a in client.list_artifacts(report["mlflow_run_id"], "frontier")}
    assert {"frontier/frontier.md", "frontier/frontier.json", "frontier/frontier.png"} <= logged

    assert artifact is not None and "NVILA: the efficient frontier" in artifact and "| **peer** |" in artifact
