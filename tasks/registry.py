"""Log a checkpoint directory as an MLflow pyfunc model, register it, and keep the `best` alias on the best version."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

import nvila_model
from tasks import mlflow_model
from tasks.tracking import MlflowTracker, tracking_uri

BEST = "best"
METRIC_TAG = "metric"
# What the pyfunc takes: a prompt and, optionally, an image path per row; it answers one string per row.
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "image", required=False)]),
                           outputs=Schema([ColSpec("string")]))


def log_and_register(
    tracker: MlflowTracker, checkpoint: str | Path, name: str, metric: str, value: float | None
) -> str:
    """Log `checkpoint` as model `name` in the tracker's run and register it; returns the new version."""
    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=mlflow_model.__file__,
            artifacts={mlflow_model.CHECKPOINT: str(checkpoint)},
            code_paths=[str(Path(nvila_model.__file__).parent)],
            pip_requirements=["torch==2.13.0", "transformers>=5.0", "tokenizers", "safetensors", "pillow"],
            registered_model_name=name,
            signature=SIGNATURE,
        )
    version = str(info.registered_model_version)
    client = tracker.client
    client.update_run(tracker.run_id, status="RUNNING")  # leaving the fluent context closed the run
    client.set_model_version_tag(name, version, "checkpoint", str(checkpoint))
    if value is not None:
        client.set_model_version_tag(name, version, METRIC_TAG, f"{metric}={value}")
    return version


def _metric(version: object) -> float | None:
    tag = getattr(version, "tags", {}).get(METRIC_TAG, "")
    try:
        return float(tag.split("=", 1)[1])
    except (IndexError, ValueError):
        return None


def set_best_alias(name: str, client: MlflowClient | None = None, alias: str = BEST) -> str | None:
    """Point `alias` at the version of `name` with the highest recorded metric; returns that version."""
    client = client or MlflowClient(tracking_uri=tracking_uri())
    versions = client.search_model_versions(f"name='{name}'")
    scored = [(m, int(v.version)) for v in versions if (m := _metric(v)) is not None]
    if not scored:
        return None
    best = str(max(scored)[1])
    client.set_registered_model_alias(name, alias, best)
    return best
