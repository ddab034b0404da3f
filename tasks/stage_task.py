"""The Prefect task that runs one pipeline stage in an MLflow child run; retries on I/O errors, input-keyed cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.runtime import flow_run, task_run

from nvila_model.manifest import git_revision, hash_path
from tasks.caching import SOURCE_ROOT, STAGE_CACHE
from tasks.stages import Configs, spec
from tasks.tracking import MlflowTracker, flatten, run_status, start_run

# Errors worth a retry: storage and network hiccups, not a missing input or a bad config.
NOT_TRANSIENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
SMALL_OUTPUTS = (".json", ".png", ".md", ".csv", ".txt", ".yaml")


@dataclass(frozen=True)
class RunContext:
    """Where a pipeline run tracks: the MLflow experiment and the parent run of the stage runs."""

    experiment: str
    parent_run_id: str

    def parent(self) -> MlflowTracker:
        return MlflowTracker(self.parent_run_id)


def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only transient I/O failures (OSError but not a missing path)."""
    try:
        state.result()
    except NOT_TRANSIENT:
        return False
    except OSError:
        return True
    except BaseException:
        return False
    return False


def stage_tags(stage: str) -> dict[str, str]:
    """Tags of a stage run: Prefect flow/task run ids and the git revision."""
    return {
        "stage": stage,
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.root_flow_run_id": str(flow_run.root_flow_run_id or ""),
        "prefect.task_run_id": str(task_run.id or ""),
        "git.revision": git_revision(SOURCE_ROOT),
    }


def record_output(tracker: MlflowTracker, out: Path) -> str:
    """Tag the run with the output's hash and its manifest's input hashes; log small files and metrics."""
    digest = hash_path(out)
    tracker.set_tags({"output.path": out, "output.sha256": digest})
    manifest = out / "manifest.json"
    if manifest.is_file():
        inputs = json.loads(manifest.read_text()).get("inputs", {})
        tracker.set_tags({f"data.{name}.sha256": meta.get("sha256", "") for name, meta in inputs.items()})
    metrics = out / "metrics.json"
    if metrics.is_file():
        tracker.log_metrics(flatten(json.loads(metrics.read_text())))
    for path in sorted(out.glob("*")) if out.is_dir() else [out]:
        if path.is_file() and path.suffix in SMALL_OUTPUTS and path.stat().st_size < 5_000_000:
            tracker.log_artifact(path, "outputs")
    return digest


@task(
    name="stage",
    task_run_name="{stage}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_on_io,
    cache_policy=STAGE_CACHE,
    persist_result=True,
)
def run_stage(stage: str, config: Configs, run: RunContext) -> dict[str, str]:
    """Run `stage` with its resolved `config` ({params key: dict}) in a child run of `run`.

    Returns the output `path` and its `sha256`, so a later cache hit can tell whether the folder still holds
    this result (another run with other params may have rewritten it).
    """
    tracker = start_run(run.experiment, stage, tags=stage_tags(stage), parent=run.parent())
    tracker.log_params(config)
    ok = False
    try:
        out = spec(stage).run(config, tracker)
        digest = record_output(tracker, out)
        ok = True
        return {"path": str(out), "sha256": digest}
    finally:
        tracker.end(run_status(ok))


@task(name="cached-stage", task_run_name="{stage}-cached")
def record_cached_stage(stage: str, config: Configs, out: str, run: RunContext) -> str:
    """A child run for a stage Prefect skipped (cache hit): same params, tagged `cached`, pointing at the output."""
    tracker = start_run(run.experiment, stage, tags={**stage_tags(stage), "cached": "true"}, parent=run.parent())
    tracker.log_params(config)
    record_output(tracker, Path(out))
    tracker.end(run_status(True))
    return out


def still_valid(result: dict[str, str]) -> bool:
    """Whether a cached stage result's output folder still holds what that run wrote."""
    return Path(result["path"]).exists() and hash_path(result["path"]) == result["sha256"]
