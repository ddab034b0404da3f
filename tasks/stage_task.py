"""The Prefect task that runs one DVC stage of a run's workspace, in an MLflow child run of the pipeline run.

The stage runs as `dvc repro --single-item <stage>`: DVC decides whether to compute it or restore it from its
run-cache (same command, params, code and inputs as an earlier run), runs the stage's `nvila` command and records
the result in the workspace's `dvc.lock`. The command's output streams into the task's log (the Prefect UI shows
it per stage); the stage command logs its step metrics to the child run it is given through the environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run, task_run

from tasks.dvc_stages import StageFailed, lock_entry, lock_params, out_paths, outs_digest
from tasks.tracking import (
    RUN_ENV,
    MlflowTracker,
    client,
    flatten,
    run_status,
    start_run,
)
from tasks.workspace import Workspace

MARKER_ENV = "NVILA_STAGE_MARKER"  # the stage command touches this file when it runs (not when DVC restores it)
TRANSIENT_EXIT = 75  # EX_TEMPFAIL: the stage command met an I/O error worth a retry
SMALL_OUTPUTS = (".json", ".png", ".md", ".csv", ".txt", ".yaml")
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class RunContext:
    """Where a pipeline run tracks: the MLflow experiment and the parent run of the stage runs."""

    experiment: str
    parent_run_id: str

    def parent(self) -> MlflowTracker:
        return MlflowTracker(self.parent_run_id)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only a stage whose command reported a transient I/O failure."""
    try:
        state.result()
    except StageFailed as exc:
        return exc.exit_code == TRANSIENT_EXIT
    except BaseException:
        return False
    return False


def _failure(stage: str, lines: list[str]) -> StageFailed:
    """The stage's own one-line error (`nvila: error: ...`) when it printed one, else DVC's last words."""
    code_match = [re.search(r"exited with (-?\d+)", line) for line in lines]
    codes = [int(m.group(1)) for m in code_match if m]
    mine = [line.split("nvila: error: ", 1)[1] for line in lines if "nvila: error: " in line]
    if mine:
        return StageFailed(f"stage {stage}: " + "; ".join(mine), codes[-1] if codes else None)
    tail = "\n".join(lines[-15:])
    return StageFailed(f"stage {stage} failed:\n{tail}", codes[-1] if codes else None)


def run_dvc(stage: str, ws: Workspace, env: dict[str, str]) -> None:
    """`dvc repro --single-item stage` in the workspace, its output streamed to the task log line by line.

    An interrupt stops the stage command (SIGINT, then SIGKILL after a grace period) before it propagates: a
    training stage keeps its last periodic checkpoint, from which a re-run resumes.
    """
    logger = get_run_logger()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--quiet", "--single-item", stage], cwd=ws.root,
                            env={**os.environ, **ws.env(), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                logger.info("%s", line)
        proc.wait()
    except BaseException:
        stop_process_group(proc)
        raise
    if proc.returncode:
        raise _failure(stage, lines)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGINT to the stage's process group (it was started in its own session), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def origin_run(stage: str, digest: str) -> str | None:
    """The MLflow run that computed these outputs of `stage` (the first that ran it with this result)."""
    mlflow_client = client()
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    found = mlflow_client.search_runs(
        experiments, f"tags.stage = '{stage}' and tags.`dvc.outs` = '{digest}' and tags.cached = 'false'",
        order_by=["attributes.start_time ASC"], max_results=1)
    return found[0].info.run_id if found else None


def record_outputs(tracker: MlflowTracker, ws: Workspace, stage: str) -> None:
    """Log the stage's small output files and its eval metrics on its run."""
    for out in out_paths(ws.root, stage):
        files = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
        for path in files:
            if path.suffix in SMALL_OUTPUTS and path.stat().st_size < 5_000_000 and path.parent == (
                    out if out.is_dir() else out.parent):
                tracker.log_artifact(path, "outputs")
        if out.name == "metrics.json" and out.is_file():
            tracker.log_metrics(flatten(json.loads(out.read_text())))


def stage_tags(stage: str) -> dict[str, str]:
    return {"stage": stage, "prefect.flow_run_id": str(flow_run.id or ""),
            "prefect.root_flow_run_id": str(flow_run.root_flow_run_id or ""),
            "prefect.task_run_id": str(task_run.id or "")}


@task(name="stage", task_run_name="{stage}", retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def run_stage(stage: str, ws: Workspace, run: RunContext) -> dict[str, Any]:
    """Run (or restore) DVC stage `stage` in the workspace; returns whether it was restored and from which run."""
    tracker = start_run(run.experiment, stage, tags=stage_tags(stage), parent=run.parent())
    marker = Path(tempfile.mkdtemp(prefix="nvila-stage-")) / "ran"
    status = run_status(False)
    started = time.perf_counter()
    try:
        run_dvc(stage, ws, {RUN_ENV: tracker.run_id, MARKER_ENV: str(marker)})
        entry = lock_entry(ws.root, stage)
        digest, cached = outs_digest(entry), not marker.exists()
        origin = origin_run(stage, digest) if cached else None
        tracker.set_tags({"cached": str(cached).lower(), "dvc.outs": digest,
                          **({"cached_from": origin} if origin else {})})
        tracker.log_params(flatten(lock_params(entry)))
        record_outputs(tracker, ws, stage)
        get_run_logger().info("%s: %s", stage, f"restored from the cache (computed by run {origin})" if cached
                              else "ran")
        status = run_status(True)
        seconds = round(time.perf_counter() - started, 2)
        tracker.log_metrics({"stage_seconds": seconds})
        return {"stage": stage, "cached": cached, "cached_from": origin, "outs": digest, "seconds": seconds}
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
        marker.unlink(missing_ok=True)
        marker.parent.rmdir()
