"""MlflowTracker logs params, step metrics and artifacts to a child run; the `best` alias follows the metric."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite store for the module (creating its schema is the slow part)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("NVILA_PROJECT_DIR", str(root))
        yield uri


def test_tracker_run_tree(store: str, tmp_path: Path) -> None:
    from nvila_model.tracking import Tracker
    from tasks.tracking import start_run

    parent = start_run("exp", "pipeline", tags={"git.revision": "abc"})
    child = start_run("exp", "stage", parent=parent)
    tracker: Tracker = child  # structurally a nvila_model.tracking.Tracker
    assert all(callable(getattr(tracker, m)) for m in ("log_params", "log_metrics", "log_artifact"))
    child.log_params({"train": {"lr": 0.1, "modules": ["a", "b"]}})
    for step in range(3):
        child.log_metrics({"loss": 1.0 / (step + 1), "note": "skipped"}, step=step)
    (tmp_path / "metrics.json").write_text(json.dumps({"acc_mean": 0.5}))
    child.log_artifact(tmp_path / "metrics.json", "outputs")
    child.end()

    run = child.client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.params == {"train.lr": "0.1", "train.modules": "['a', 'b']"}
    assert [m.step for m in child.client.get_metric_history(child.run_id, "loss")] == [0, 1, 2]
    assert [a.path for a in child.client.list_artifacts(child.run_id, "outputs")] == ["outputs/metrics.json"]
    assert run.info.artifact_uri.startswith(Path(store.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").as_uri())


def test_best_alias_follows_metric(store: str, tmp_path: Path) -> None:
    from tasks.registry import METRIC_TAG, set_best_alias
    from tasks.tracking import client, start_run

    mlflow_client = client()
    mlflow_client.create_registered_model("m")
    for value in (0.3, 0.8, 0.5):
        run = start_run("exp", "pipeline")
        version = mlflow_client.create_model_version("m", source=str(tmp_path), run_id=run.run_id)
        mlflow_client.set_model_version_tag("m", version.version, METRIC_TAG, f"acc_mean={value}")
    assert set_best_alias("m") == "2"
    assert str(mlflow_client.get_model_version_by_alias("m", "best").version) == "2"


def test_relogged_param_with_new_value_goes_to_runtime(store: str) -> None:
    from tasks.tracking import start_run

    tracker = start_run("exp", "stage")
    tracker.log_params({"score": {"small_checkpoint": None}})
    tracker.log_params({"score.small_checkpoint": "None"})  # same value: skipped
    tracker.log_params({"score.small_checkpoint": "runs/scorers/small"})  # resolved at run time
    params = tracker.client.get_run(tracker.run_id).data.params
    assert params == {"score.small_checkpoint": "None", "score.small_checkpoint.runtime": "runs/scorers/small"}


def test_registered_pyfunc_answers_prompts_with_and_without_an_image(store: str, tmp_path: Path, tiny_model,
                                                                      processor) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    from tasks.registry import log_and_register
    from tasks.tracking import start_run

    checkpoint = tmp_path / "model"
    tiny_model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    Image.new("RGB", (40, 30), "red").save(tmp_path / "red.png")
    tracker = start_run("exp", "register")
    version = log_and_register(tracker, checkpoint, "nvila-test", "acc_mean", 0.5)
    model = mlflow.pyfunc.load_model(f"models:/nvila-test/{version}")
    assert model.metadata.get_input_schema().input_names() == ["prompt", "image"]
    rows = pd.DataFrame({"prompt": ["what colour?", "hello"], "image": [str(tmp_path / "red.png"), None]})
    answers = model.predict(rows)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(Exception, match="prompt"):
        model.predict(pd.DataFrame({"question": ["no prompt column"]}))
