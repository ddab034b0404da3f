"""Ctrl-C and kills, from the command line as a user does it (shrunk pipeline up to token_pretrain):
- SIGINT to the process group during a training stage: out within seconds, exit 130 with one line saying how to
  resume, the runs marked in MLflow (KILLED) and Prefect (Crashed), nothing left running, the checkpoint kept;
- SIGTERM to the run's process alone (a `kill`, a container stop, a cancel from the Prefect UI): the same, exit 143;
  the stage is stopped before its workspace is removed, so it never trains on records gone missing;
- SIGKILL of the whole group: its Prefect server (in a session of its own) goes too; the next run marks the dead run
  and removes its workspace;
- the next run resumes the interrupted stage from its checkpoint and restores the finished ones from the cache.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.orchestration.conftest import git_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
STAGES = ["--stages", "token_pretrain"]
# token_pretrain's steps (a checkpoint every 3): enough left after the checkpoint each interrupt waits for (15 s after
# the first, at least 10 s after the one the SIGTERM waits for) that the stage can not finish, and remove its work
# folder as a finished stage does, before the interrupt reaches it (about 3 s)
PRETRAIN_STEPS = 36


def _foreground() -> None:
    """Ctrl-C's default action, as a terminal's foreground job has it. A test run started in the background of a
    non-interactive shell (`.ci/run &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(root: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`nvila pipeline run` in its own process group, as a shell runs a foreground job."""
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "pipeline", "run", "--no-apply", *STAGES], cwd=root,
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_foreground)


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def _wait_for_checkpoint(root: Path, proc: subprocess.Popen, log: Path, after: int = 0, timeout: float = 900) -> Path:
    """Wait until token_pretrain (`PRETRAIN_STEPS`) has written a checkpoint past step `after` whole: the stage is
    early on and resumable. (Its folder appears when the save starts; an interrupt then leaves it partial.)"""
    from nvila_model.train.stage import is_complete

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = [p for p in (root / ".nvila" / "work").glob("token_pretrain/*/checkpoints/checkpoint-*")
                 if _step(p) > after and is_complete(p)]
        if found:
            return min(found, key=_step)
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint appeared (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def _stopped(root: Path, proc: subprocess.Popen, log: Path, checkpoint: Path, code: int) -> tuple[str, list[Path]]:
    """After the signal: the run exits with `code` within seconds, nothing it started runs on, the stage keeps a
    checkpoint, its workspace is gone. Returns the run's output and the complete checkpoints kept."""
    from nvila_model.train.stage import is_complete

    sent = time.monotonic()
    proc.wait(timeout=120)
    took = time.monotonic() - sent
    output = log.read_text()
    assert proc.returncode == code, output[-3000:]
    assert took < 45, f"took {took:.0f} s to stop"
    assert not _descendants_alive(proc.pid), "the stage, DVC and the servers stopped with it"
    # The stage may have saved a later checkpoint (and rotated this one out) before the signal reached it.
    kept = [p for p in checkpoint.parent.glob("checkpoint-*") if is_complete(p)]
    assert kept, f"the interrupted stage keeps its last checkpoint (stopped {took:.1f} s after the signal):\n" + \
        "\n".join(line for line in output.splitlines() if "token_pretrain" in line)
    assert not list((root / ".nvila" / "workspaces").iterdir())
    return output, kept


def _descendants_alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pgid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split(None, 1)[0] == str(pgid)]


def _servers_of(root: Path) -> list[int]:
    """Processes of a Prefect server on the project's database (PREFECT_HOME in their environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in args and any(b"prefect" in a for a in args) and \
                f"PREFECT_HOME={root / '.prefect'}".encode() in env:
            found.append(int(proc.name))
    return found


def _mlflow(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nvila")
    return client, client.search_runs([experiment.experiment_id], "tags.kind = 'pipeline'",
                                      order_by=["attributes.start_time ASC"])


def _prefect_states(root: Path, env: dict[str, str]) -> dict[str, str]:
    """flow run id -> state name, read through a server on the project's Prefect database."""
    code = ("import asyncio, json\n"
            "from prefect.client.orchestration import get_client\n"
            "async def main():\n"
            "    async with get_client() as c:\n"
            "        print(json.dumps({str(r.id): r.state.name for r in await c.read_flow_runs()}))\n"
            "asyncio.run(main())\n")
    from flows.services import free_port, prefect_env, start_prefect_server, stop

    port = free_port()
    server = start_prefect_server(port, root / ".prefect")
    try:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **prefect_env(port, root / ".prefect")},
                             capture_output=True, text=True, check=True).stdout
    finally:
        stop(server)
    import json

    return json.loads(out.strip().splitlines()[-1])


def test_interrupts_and_kills_then_resume(tmp_path: Path) -> None:
    root = git_project(tmp_path / "project", {"token_pretrain": {"max_steps": PRETRAIN_STEPS}})
    env = {**os.environ, "NVILA_PROJECT_DIR": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": str(root), "PREFECT_HOME": str(root / ".prefect")}
    env.pop("PREFECT_API_URL", None)

    first_log = tmp_path / "first.log"
    proc = _start(root, env, first_log)
    checkpoint = _wait_for_checkpoint(root, proc, first_log)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    output, kept = _stopped(root, proc, first_log, checkpoint, 130)
    lines = [line for line in output.splitlines() if line.startswith("nvila: ")]
    assert lines == [lines[0]] and "run the same command again to resume" in lines[0], lines

    term_log = tmp_path / "term.log"
    proc = _start(root, env, term_log)
    checkpoint = _wait_for_checkpoint(root, proc, term_log, after=max(map(_step, kept)))  # resumed, and training
    proc.send_signal(signal.SIGTERM)  # to the run's process only: `kill`, a container stop, a Prefect cancel
    output, _ = _stopped(root, proc, term_log, checkpoint, 128 + signal.SIGTERM)
    assert "skipping record" not in output, "the stage went on after its workspace was removed"

    second_log = tmp_path / "second.log"
    killed = _start(root, env, second_log)
    deadline = time.monotonic() + 300
    while not list((root / ".nvila" / "runs").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the run is registered: its MLflow and Prefect runs are open
    time.sleep(3)
    assert killed.poll() is None, second_log.read_text()[-3000:]
    assert _servers_of(root), "the run started its own Prefect server"
    os.killpg(killed.pid, signal.SIGKILL)  # no chance to mark anything
    killed.wait()
    deadline = time.monotonic() + 30
    while _servers_of(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _servers_of(root), "the killed run's Prefect server (its own session) went with it"

    done = subprocess.run([sys.executable, "-m", "flows.cli", "pipeline", "run", "--no-apply", *STAGES], cwd=root,
                          env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    client, parents = _mlflow(root)
    assert [p.info.status for p in parents] == ["KILLED", "KILLED", "KILLED", "FINISHED"]
    for interrupted in parents[:2]:  # Ctrl-C, SIGTERM
        stage_runs = client.search_runs([interrupted.info.experiment_id],
                                        f"tags.mlflow.parentRunId = '{interrupted.info.run_id}'")
        assert [r.info.status for r in stage_runs if r.info.status != "FINISHED"] == ["KILLED"]
    states = _prefect_states(root, env)
    flow_ids = [p.data.tags["prefect.flow_run_id"] for p in parents]
    assert [states[i] for i in flow_ids] == ["Crashed", "Crashed", "Crashed", "Completed"]
    last = {r.info.run_name: r for r in client.search_runs(
        [parents[3].info.experiment_id], f"tags.mlflow.parentRunId = '{parents[3].info.run_id}'")}
    assert last["generate"].data.tags["cached"] == "true"
    assert not list((root / ".nvila" / "workspaces").iterdir()) and not list((root / ".nvila" / "runs").iterdir())
    import dvc.api

    exp = next(e for e in dvc.api.exp_show(repo=str(root)) if e.get("Experiment") == parents[3].info.run_name)
    meta = dvc.api.read(f"runs/{checkpoint.parent.parent.parent.name}/meta.json", repo=str(root), rev=exp["rev"])
    assert '"resumed_from": "' in meta, "the interrupted stage resumed from its checkpoint"
