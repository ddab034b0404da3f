"""End to end: the pruning sweep flow on the tiny preset (shrunk) under the Prefect test harness.

The sweep is a set of pipeline runs, one DVC experiment per point; everything upstream of `prune` is computed once
and restored from DVC's cache at the other points; each point's SFT stages train on their own subset for the same
number of epochs (so fewer records cost fewer steps); the comparison lands in files, an MLflow run and a Prefect
artifact.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.orchestration.conftest import git_project, point_env_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
SWEEP = {"sweep": {"keep_ratios": [1.0, 0.5], "methods": ["deltaloss"],
                   "epochs": {"image_sft": 1, "video_sft": 1}}}


def test_sweep_flow_tiny(tmp_path, monkeypatch, prefect_server, latest_artifact) -> None:
    from mlflow.tracking import MlflowClient

    from flows.sweep import pruning_sweep

    root = git_project(tmp_path / "project", SWEEP)
    point_env_at(monkeypatch, root)
    rows = pruning_sweep(report_dir=str(tmp_path / "report"))
    artifact = latest_artifact("nvila-pruning-sweep")

    assert [(r["method"], r["keep_ratio"]) for r in rows] == [("all-data", 1.0), ("deltaloss", 0.5)]
    full, *pruned = rows
    for row in pruned:  # half of every subset, same epochs: about half the steps and time
        assert row["train_records"] == pytest.approx(full["train_records"] / 2, abs=9)
        assert row["train_steps"] < full["train_steps"]
        assert row["time_vs_all_data"] == pytest.approx(row["train_seconds"] / full["train_seconds"])
        assert 0.0 <= row["acc_mean"] <= 1.0 and row["chance"] > 0
    assert len({r["experiment"] for r in rows}) == 2

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("nvila-sweep")
    for row in pruned:  # pre-training computed once, at the first point, and restored at the others
        stages = {r.info.run_name: r.data.tags["cached"] for r in client.search_runs(
            [experiment.experiment_id], f"tags.mlflow.parentRunId = '{row['mlflow_run_id']}'")}
        assert stages["token_pretrain"] == stages["score"] == "true" and stages["image_sft"] == "false"

    out = tmp_path / "report"
    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(rows))
    assert (out / "pruning_sweep.png").stat().st_size > 10_000
    sweep_runs = client.search_runs([experiment.experiment_id], "tags.kind = 'sweep'")
    assert len(sweep_runs) == 1 and sweep_runs[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(sweep_runs[0].info.run_id, "sweep")}
    assert {"sweep/pruning_sweep.png", "sweep/comparison.json", "sweep/comparison.md"} <= logged
    assert sweep_runs[0].data.metrics["deltaloss-0.5.acc_mean"] == pytest.approx(rows[1]["acc_mean"])

    assert artifact is not None and "DeltaLoss pruning sweep" in artifact
    assert "| all-data | 1 |" in artifact and "| deltaloss | 0.5 |" in artifact
