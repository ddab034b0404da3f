"""The Prefect task that runs one DVC stage of a run's workspace, in an MLflow child run of the pipeline run, and
the scheduler that runs a plan's stages, independent ones side by side.

The stage runs as `dvc repro --single-item <stage>`: DVC decides whether to compute it or restore it from its
run-cache (same command, params, code and inputs as an earlier run), runs the stage's `nvila` command and records
the result in the workspace's `dvc.lock`. The command's output streams into the task's log (the Prefect UI shows
it per stage); the stage command logs its step metrics to the child run it is given through the environment.

Stages that do not depend on each other (DeltaLoss scoring and the three pre-training stages; the evaluation of
the trained model and the fine-tune-quantize-evaluate chain) run at once, each with its share of the cores: DVC holds
its repository lock only while it checks and records a stage, not while the command runs (`--wait-for-lock` makes
the other wait for those moments), and locks each stage's outputs. What this gains on a 2-core machine is overlap:
two one-thread training processes do only 1.08x the arithmetic of one two-thread process (bench/parallel_stages.py),
but one stage's start, data decoding and checkpoint writes hide behind the other's compute.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run, task_run

from tasks.dvc_stages import (
    StageFailed,
    lock_entry,
    lock_params,
    out_paths,
    outs_digest,
)
from tasks.env import THREADS_ENV, cpu_cores
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
# DVC's advice after it records a stage: stage dvc.lock in git, turn on autostage, `dvc push`. A run does that itself
# after its last stage (it saves the workspace as a DVC experiment, and pushes the outputs where a remote is set), so
# in a run's log the advice is wrong, and it took five of every stage's lines. A failure still reports every line.
_DVC_ADVICE = re.compile(r"To track the changes with git, run:|git add |To enable auto staging, run:"
                         r"|dvc config core\.autostage true|Use `dvc push` to send your updates")
# The stage commands running (each with its workspace's root), for the scheduler to stop on an interrupt, and those
# it stopped: their tasks end as interrupted, not failed.
_LIVE: dict[subprocess.Popen, str] = {}
_STOPPED: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


class StageInterrupted(Exception):
    """The run was interrupted while this stage ran: its command was stopped (a training stage keeps its last
    checkpoint). Raised in the stage's task thread; the flow itself raises KeyboardInterrupt (Ctrl-C) or Prefect's
    TerminationSignal (SIGTERM)."""


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

    Not `--quiet`: that hides DVC's own ERROR lines too, so a stage DVC refuses to run (a listed param missing from
    params.yaml, a missing dependency) or a command's exit status would fail without a word.
    An interrupt stops the stage command (SIGINT, then SIGKILL after a grace period) before it propagates: a
    training stage keeps its last periodic checkpoint, from which a re-run resumes.
    """
    logger = get_run_logger()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage],
                            cwd=ws.root, env={**os.environ, **ws.env(), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    with _LIVE_LOCK:
        _LIVE[proc] = str(ws.root)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                if not _DVC_ADVICE.match(line.lstrip()):
                    logger.info("%s", line)
        proc.wait()
    except BaseException:
        stop_process_group(proc)
        raise
    finally:
        with _LIVE_LOCK:
            del _LIVE[proc]
            stopped = proc in _STOPPED
            _STOPPED.discard(proc)
    if stopped:
        raise StageInterrupted(f"stage {stage}: stopped by an interrupt of the run")
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


def stop_stages(ws: Workspace) -> None:
    """Stop every stage command running in the workspace, at once (each gets its grace period in parallel)."""
    with _LIVE_LOCK:
        procs = [proc for proc, root in _LIVE.items() if root == str(ws.root)]
        _STOPPED.update(procs)
    stoppers = [threading.Thread(target=stop_process_group, args=(proc,)) for proc in procs]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()


@task(name="stage", task_run_name="{stage}", retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def run_stage(stage: str, ws: Workspace, run: RunContext, threads: int | None = None) -> dict[str, Any]:
    """Run (or restore) DVC stage `stage` in the workspace, its torch on `threads` CPU threads (None: every core);
    returns whether it was restored and from which run."""
    tracker = start_run(run.experiment, stage, tags=stage_tags(stage), parent=run.parent())
    marker = Path(tempfile.mkdtemp(prefix="nvila-stage-")) / "ran"
    status = run_status(False)
    started = time.perf_counter()
    try:
        run_dvc(stage, ws, {RUN_ENV: tracker.run_id, MARKER_ENV: str(marker),
                            **({THREADS_ENV: str(threads)} if threads else {})})
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
    except (KeyboardInterrupt, StageInterrupted):
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
        marker.unlink(missing_ok=True)
        marker.parent.rmdir()


def run_stages(order: list[str], needs: dict[str, set[str]], ws: Workspace, run: RunContext,
               parallel: int) -> list[dict[str, Any]]:
    """Run the plan `order` of the workspace as Prefect tasks (`schedule`); each stage's result, in plan order."""
    return schedule(order, needs, parallel, lambda stage, threads: run_stage.submit(stage, ws, run, threads),
                    lambda: stop_stages(ws))


def stage_threads(needs: dict[str, set[str]], parallel: int, cores: int) -> dict[str, int | None]:
    """The torch threads of each stage of the graph `needs` (what a run of every stage computes, not only a partial
    run's plan): a share of the cores (`cores // parallel`) for a stage that some other stage neither needs nor
    follows, so that they can run at once; None (every core) for the others, and for all when stages run one at a
    time.

    A one-thread and a two-thread training differ in the last bits, and a few hundred steps turn that into a
    different model (the same settings gave mean accuracy 0.537 with a projector_init restored from a partial run
    that computed it alone, 0.511 with it computed beside the scoring). So the count follows from the graph only:
    never from what happens to run beside a stage, which depends on timing, on the run's targets and on what the
    run-cache already holds. A stage then computes the same bits in every run, partial or full."""
    import networkx as nx

    if parallel == 1:
        return dict.fromkeys(needs)
    dag = nx.DiGraph([(dep, stage) for stage, deps in needs.items() for dep in deps])
    dag.add_nodes_from(needs)
    share = max(1, cores // parallel)
    # independent of some stage: not every other stage is upstream or downstream of it
    return {stage: share if len(nx.ancestors(dag, stage) | nx.descendants(dag, stage)) < len(needs) - 1 else None
            for stage in needs}


def schedule(order: list[str], needs: dict[str, set[str]], parallel: int, submit: Callable[[str, int | None], Any],
             stop: Callable[[], None]) -> list[Any]:
    """Start each stage of `order` once the stages it `needs` are done, up to `parallel` at once, in plan order where
    several are ready: `submit(stage, threads)` returns its future (`add_done_callback`, `result`), `threads` from
    `stage_threads` over the whole graph `needs` (a superset of `order`). After a failure nothing new starts, what
    runs finishes (its result is cached for the next run) and the first failure is raised; on an interrupt (or
    anything else that ends the scheduler early) `stop()` stops what runs, and the interrupt is raised once it has:
    the caller then removes the workspace, which a stage still running would go on reading. Returns each stage's
    result, in plan order.
    """
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()
    ended: set[str] = set()

    def done(stage: str) -> None:
        ended.add(stage)
        finished.put(stage)

    threads = stage_threads(needs, parallel, cpu_cores())
    waiting, running, results = list(order), {}, {}
    failure: BaseException | None = None
    try:
        while waiting or running:
            ready = [s for s in waiting if failure is None and needs[s].issubset(results)]
            for stage in ready[:max(0, parallel - len(running))]:
                waiting.remove(stage)
                running[stage] = submit(stage, threads[stage])
                running[stage].add_done_callback(lambda _, stage=stage: done(stage))
            if not running:
                break
            stage = finished.get()
            try:
                results[stage] = running.pop(stage).result()
            except Exception as exc:
                failure = failure or exc
    except BaseException:  # Ctrl-C, SIGTERM (Prefect raises TerminationSignal: a kill, a cancel from the UI), a bug
        stop()
        while not ended.issuperset(running):  # the running stages' tasks end once their commands have stopped
            time.sleep(0.1)
        raise
    if failure is not None:
        raise failure
    return [results[stage] for stage in order]
