"""Runs whose process died (killed, power cut) are marked as such when the next run starts, instead of showing as
running in Prefect and MLflow forever; their workspaces are removed.

Each pipeline run leaves a small record in `.nvila/runs/` while it is alive: its process id, Prefect flow run and
MLflow run. An interrupted run (Ctrl-C, SIGTERM) marks itself; only a run that could not (SIGKILL) leaves a record
behind, which `reap_stale` finds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from tasks.workspace import STATE, Workspace, close_workspace

log = logging.getLogger(__name__)
RUNS = "runs"


def _record(project: Path, name: str) -> Path:
    return project / STATE / RUNS / f"{name}.json"


def register(project: Path, name: str, flow_run_id: str, mlflow_run_id: str) -> None:
    """Note that run `name` is alive in this process."""
    path = _record(project, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "flow_run_id": flow_run_id,
                                "mlflow_run_id": mlflow_run_id}))


def unregister(project: Path, name: str) -> None:
    _record(project, name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_mlflow(run_id: str) -> None:
    from tasks.tracking import client

    mlflow_client = client()
    run = mlflow_client.get_run(run_id)
    if run.info.status == "RUNNING":
        mlflow_client.set_terminated(run_id, status="KILLED")
        mlflow_client.set_tag(run_id, "killed", "process gone; marked by the next run")
    children = mlflow_client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    for child in children:
        if child.info.status == "RUNNING":
            mlflow_client.set_terminated(child.info.run_id, status="KILLED")


def _mark_prefect(flow_run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as prefect_client:
        flow_run = prefect_client.read_flow_run(flow_run_id)
        if flow_run.state is not None and not flow_run.state.is_final():
            prefect_client.set_flow_run_state(flow_run_id, Crashed(message="process gone; marked by the next run"),
                                              force=True)


def reap_stale(project: Path) -> list[str]:
    """Mark every run of this host whose process is gone as killed (MLflow) and crashed (Prefect); remove its
    workspace. Returns their names."""
    reaped = []
    for path in sorted((project / STATE / RUNS).glob("*.json")):
        record = json.loads(path.read_text())
        if record["host"] != socket.gethostname() or _alive(record["pid"]):
            continue
        name = path.stem
        _mark_mlflow(record["mlflow_run_id"])
        _mark_prefect(record["flow_run_id"])
        root = project / STATE / "workspaces" / name
        if root.exists():
            close_workspace(Workspace(project, root, name))
        path.unlink(missing_ok=True)
        log.warning("run %s (process %d) had died: marked killed in MLflow and crashed in Prefect", name,
                    record["pid"])
        reaped.append(name)
    return reaped
