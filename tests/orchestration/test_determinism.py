"""The same pipeline with the same params and seed on the same machine gives the same weights and DeltaLoss scores,
bit for bit.

Two runs of the shrunk pipeline up to projector_init (the bootstrap scorers of `score` included: three trainings
through the one training path, and Ray scoring); between them DVC's run-cache is emptied, so the second run
recomputes every stage instead of restoring it.
"""

from __future__ import annotations

import shutil

import pytest

from tests.orchestration.conftest import git_project, point_env_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
OUTPUTS = ("runs/scorers/small/model.safetensors", "runs/scorers/large/model.safetensors",
           "runs/projector_init/model.safetensors", "data/scores/scores.parquet")


def test_a_rerun_reproduces_the_weights_and_scores_bit_for_bit(tmp_path, monkeypatch) -> None:
    import dvc.api
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import nvila_pipeline

    root = git_project(tmp_path / "project", {"score": {"bootstrap": {"small_steps": 6, "large_steps": 12}}})
    point_env_at(monkeypatch, root)
    with prefect_test_harness(server_startup_timeout=180):
        first = nvila_pipeline(stages=["score", "projector_init"])
        shutil.rmtree(root / ".dvc" / "cache" / "runs")
        second = nvila_pipeline(stages=["score", "projector_init"])
    assert set(second["stages"].values()) == {"ran"}, second["stages"]

    revs = {e["Experiment"]: e["rev"] for e in dvc.api.exp_show(repo=str(root)) if e.get("Experiment")}
    for path in OUTPUTS:
        blobs = [dvc.api.read(path, repo=str(root), rev=revs[run["experiment"]], mode="rb") for run in (first, second)]
        assert blobs[0] == blobs[1], f"{path} differs between two runs of the same pipeline"
