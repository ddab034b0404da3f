"""MLflow tracking: the `Tracker` the library logs through, and the parent/child run tree of a pipeline run.

Everything goes through an explicit `MlflowClient` and run id (no fluent active-run state), so stage tasks
running in Prefect's worker threads log to the right run. The store is `$MLFLOW_TRACKING_URI`, by default a
SQLite file in the project (see `tasks.env`), with artifacts under `<project>/mlartifacts`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from tasks.env import mlflow_uri, project_dir

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000
RUN_ENV = "NVILA_MLFLOW_RUN_ID"  # a stage command given this logs its metrics to that (child) run


def tracking_uri() -> str:
    """The tracking store in use: `$MLFLOW_TRACKING_URI`, else the project's SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow_uri()


def tracking_file() -> Path | None:
    """The SQLite file of a local tracking store (None for a tracking server)."""
    uri = tracking_uri()
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def client() -> MlflowClient:
    """A client on the configured store."""
    return MlflowClient(tracking_uri=tracking_uri())


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (`{"a": {"b": 1}}` -> `{"a.b": 1}`)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class MlflowTracker:
    """`nvila_model.tracking.Tracker` on one MLflow run."""

    def __init__(self, run_id: str, mlflow_client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = mlflow_client or client()
        self._params: dict[str, str] | None = None  # what the run holds, fetched on first use

    def log_params(self, params: dict[str, Any]) -> None:
        """Log (flattened) params, stringified and truncated to MLflow's limit.

        MLflow refuses to change a logged param. The task logs a stage's config before it runs and the library
        may log the value it resolved at run time under the same name (a bootstrapped checkpoint for a null
        one): a repeat with the same value is skipped, a different value goes to `<name>.runtime`.
        """
        if self._params is None:
            self._params = dict(self.client.get_run(self.run_id).data.params)
        items = []
        for key, value in flatten(params).items():
            text = str(value)[:MAX_PARAM_LEN]
            if self._params.get(key, text) != text:
                key = f"{key}.runtime"
            if self._params.get(key) != text:
                items.append(Param(key, text))
                self._params[key] = text
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics at `step` (0 when not given); non-numeric values are skipped."""
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or a directory's files, under `artifact_path`."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set string tags on the run."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with an MLflow run status (FINISHED, FAILED, KILLED)."""
        self.client.set_terminated(self.run_id, status=status)


def experiment_id(name: str, mlflow_client: MlflowClient | None = None) -> str:
    """Get or create an experiment; with a local store its artifacts go to `<project>/mlartifacts/<name>`."""
    mlflow_client = mlflow_client or client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not tracking_uri().startswith(("http://", "https://", "databricks")):
        location = (project_dir() / "mlartifacts" / name).as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def start_run(
    experiment: str, run_name: str, tags: dict[str, Any] | None = None, parent: MlflowTracker | None = None
) -> MlflowTracker:
    """Open a run (a child of `parent` when given) and return its tracker."""
    mlflow_client = parent.client if parent else client()
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent is not None:
        all_tags[PARENT_TAG] = parent.run_id
    run = mlflow_client.create_run(experiment_id(experiment, mlflow_client), run_name=run_name, tags=all_tags)
    return MlflowTracker(run.info.run_id, mlflow_client)


def run_status(ok: bool) -> str:
    """MLflow's name for a finished or failed run."""
    return RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)


def ui_url() -> str:
    """Where the MLflow UI for this store is: the tracking server, or the one `nvila ui` starts."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('NVILA_MLFLOW_PORT', '5000')}"


def run_url(tracker: MlflowTracker) -> str:
    """A link to the run in the MLflow UI."""
    run = tracker.client.get_run(tracker.run_id)
    return f"{ui_url()}/#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}"


def tracker_from_env() -> MlflowTracker | None:
    """The tracker of the run named by `$NVILA_MLFLOW_RUN_ID` (set by the pipeline for each stage command)."""
    run_id = os.environ.get(RUN_ENV)
    return MlflowTracker(run_id) if run_id else None


def dvc_lock_hashes(root: Path) -> dict[str, str]:
    """`dvc.lock` output hashes as tags (`dvc.<path>` -> md5); empty before the first `dvc repro`."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        f"dvc.{out['path']}": out.get("md5", "")
        for stage in stages.values()
        for out in stage.get("outs", [])
    }
