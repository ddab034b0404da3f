"""End to end: the pruning sweep flow on the tiny preset (shrunk corpus and steps) under the Prefect test harness.

Checks what the sweep promises: pre-training runs once and is shared, each point's SFT stages train on their own
pruned subset for the same number of epochs (so fewer records cost fewer steps), and the comparison lands in
files, in an MLflow run and as a Prefect artifact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SHRINK = {
    "generate": {"scale": 0.2},
    "score": {"bootstrap": {"small_steps": 2, "large_steps": 2, "share": 0.05}},
    **{stage: {"max_steps": 20, "logging_steps": 10} for stage in ("projector_init", "vision_pretrain",
                                                                   "token_pretrain")},
    "eval": {"limit_per_subset": 2},
    "sweep": {"keep_ratios": [1.0, 0.5], "methods": ["deltaloss", "random"],
              "epochs": {"image_sft": 1, "video_sft": 1}},
}


def test_sweep_flow_tiny(project: Path, latest_artifact, shrink_params) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import pruning_sweep

    params = project / "params.yaml"
    shrink_params(params, SHRINK)
    with prefect_test_harness(server_startup_timeout=120):
        rows = pruning_sweep(preset="tiny")
        artifact = latest_artifact("nvila-pruning-sweep")

    assert [(r["method"], r["keep_ratio"]) for r in rows] == [("all-data", 1.0), ("deltaloss", 0.5),
                                                              ("random", 0.5)]
    full, *pruned = rows
    for row in pruned:  # half of every subset, same epochs: about half the steps and time
        assert row["train_records"] == pytest.approx(full["train_records"] / 2, abs=9)
        assert row["train_steps"] < full["train_steps"]
        assert row["time_vs_all_data"] == pytest.approx(row["train_seconds"] / full["train_seconds"])
        assert 0.0 <= row["acc_mean"] <= 1.0 and row["chance"] > 0

    # Pre-training ran once, in runs/; each point trained only the SFT stages, on its own subset.
    assert (project / "runs/token_pretrain/model.safetensors").is_file()
    for name, subset in (("all-data", "deltaloss-1"), ("deltaloss-0.5", "deltaloss-0.5"),
                         ("random-0.5", "random-0.5")):
        point = project / "runs/sweep" / name
        assert sorted(p.name for p in point.iterdir()) == ["eval", "image_sft", "video_sft"]
        meta = json.loads((point / "image_sft/meta.json").read_text())
        assert meta["inputs"]["pruned"]["path"] == f"data/pruned/{subset}/train.jsonl"
        manifest = json.loads((point / "image_sft/manifest.json").read_text())
        assert manifest["inputs"]["init_from"]["path"] == "runs/token_pretrain"
        assert manifest["config"]["max_steps"] == -1 and manifest["config"]["epochs"] == 1

    out = project / "runs/sweep"
    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(rows))
    assert (out / "pruning_sweep.png").stat().st_size > 10_000

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("nvila-sweep")
    sweep_runs = client.search_runs([experiment.experiment_id], "tags.kind = 'sweep'")
    assert len(sweep_runs) == 1 and sweep_runs[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(sweep_runs[0].info.run_id, "sweep")}
    assert {"sweep/pruning_sweep.png", "sweep/comparison.json", "sweep/comparison.md"} <= logged
    assert sweep_runs[0].data.metrics["random-0.5.acc_mean"] == pytest.approx(rows[2]["acc_mean"])

    assert artifact is not None and "DeltaLoss pruning sweep" in artifact
    assert "| all-data | 1 |" in artifact and "| deltaloss | 0.5 |" in artifact and "| random | 0.5 |" in artifact
