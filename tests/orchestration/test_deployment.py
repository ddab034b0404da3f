"""Serve the pipeline deployment on a real Prefect server: a run triggered through the API executes a real stage, the
cron schedule creates a run that completes (a broken scheduler fails here), and a run cancelled as the UI's *Cancel*
does ends Cancelled with its stage stopped before its workspace is removed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.services import free_port, prefect_env, start_prefect_server, stop

pytestmark = pytest.mark.timeout(600)
DEPLOYMENT = "nvila-pipeline/test-deployment"


async def _wait_for_deployment(name: str, timeout: float, api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        assert str(client.api_url).rstrip("/") == api, f"client talks to {client.api_url}, not the test server"
        while time.monotonic() < deadline:
            try:
                await client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                await asyncio.sleep(1)
    raise TimeoutError(f"deployment {name} not registered within {timeout} s")


async def _scheduled_run(name: str, timeout: float) -> object:
    """The first run the scheduler created for deployment `name`, once it is final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter())
            done = [r for r in runs if r.auto_scheduled and r.state is not None and r.state.is_final()]
            if done:
                return done[0]
            await asyncio.sleep(2)
    raise TimeoutError(f"no scheduled run of {name} finished within {timeout} s")


async def _cancel_while(name: str, flow_run_id: object, stage: str, timeout: float) -> object:
    """Pause deployment `name`'s schedule, wait until the run's task `stage` runs, cancel the run as the UI's *Cancel*
    does (state Cancelling: the serving runner then sends the run's process SIGTERM) and return the run once final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Cancelling

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        await client.pause_deployment((await client.read_deployment_by_name(name)).id)
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        while not [t for t in await client.read_task_runs(flow_run_filter=this_run)
                   if t.name == stage and t.state is not None and t.state.is_running()]:
            assert time.monotonic() < deadline, f"task {stage} did not start within {timeout} s"
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # its command is under way
        await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
        while not (run := await client.read_flow_run(flow_run_id)).state.is_final():
            assert time.monotonic() < deadline, f"the cancelled run did not end within {timeout} s: {run.state}"
            await asyncio.sleep(1)
        return run


def _processes_in(folder: Path) -> list[str]:
    """Command lines of the processes whose working directory is in `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError):
            continue
    return found


def test_served_deployment_runs_a_real_stage_and_its_schedule_fires(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.orchestration.conftest import git_project, point_env_at

    project = git_project(tmp_path / "project", {"generate": {"scale": 0.02}})
    point_env_at(monkeypatch, project)
    port = free_port()
    home = tmp_path / "prefect-home"
    env = prefect_env(port, home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "5")  # schedule within seconds, not a minute
    server = serve = None
    try:
        server = start_prefect_server(port, home, log=tmp_path / "server.log")
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "pipeline", "serve", "--name", "test-deployment",
             "--cron", "* * * * *", "--stages", "generate"],
            env={**os.environ}, stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Prefect read its settings when it was first imported (at collection); point this process's client
        # at the test server explicitly, not through the environment alone.
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        api = env["PREFECT_API_URL"]
        with temporary_settings(updates={PREFECT_API_URL: api}):
            asyncio.run(_wait_for_deployment(DEPLOYMENT, 120, api))
            asyncio.run(_wait_for_deployment("pruning-sweep/nvila-sweep", 30, api))  # served beside it
            asyncio.run(_wait_for_deployment("efficient-frontier/nvila-frontier", 30, api))
            flow_run = run_deployment(DEPLOYMENT, parameters={"stages": ["generate"]}, timeout=240)
            assert flow_run.state is not None and flow_run.state.is_completed(), (
                f"{flow_run.state}\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
            scheduled = asyncio.run(_scheduled_run(DEPLOYMENT, 200))
            # a generate of about 20 s (scale 2), cancelled once under way
            cancelled = run_deployment(DEPLOYMENT, parameters={"stages": ["generate"],
                                                               "overrides": {"generate.scale": 2.0}}, timeout=0)
            cancelled = asyncio.run(_cancel_while(DEPLOYMENT, cancelled.id, "generate", 180))
            workspaces = project / ".nvila" / "workspaces"
            left = _processes_in(workspaces)
        assert scheduled.state.is_completed(), (f"{scheduled.state}\n{(tmp_path / 'server.log').read_text()[-3000:]}"
                                               f"\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
    finally:
        stop(serve)
        stop(server)
    assert cancelled.state.is_cancelled(), f"{cancelled.state}\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
    assert not left, f"the cancelled run's stage stopped with it: {left}"
    assert not list(workspaces.iterdir()), "the cancelled run removed its workspace"
    log = (tmp_path / "serve.log").read_text()
    assert "skipping record" not in log, "the stage went on after its workspace was removed"
    # the run tracked to the project's MLflow store, tagged with its Prefect flow-run id
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_runs(
        [MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_experiment_by_name("nvila").experiment_id]
    )
    parents = {r.data.tags["prefect.flow_run_id"] for r in runs if r.data.tags.get("kind") == "pipeline"}
    assert {str(flow_run.id), str(scheduled.id), str(cancelled.id)} <= parents
    killed = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == str(cancelled.id)]
    assert sorted((r.info.run_name.startswith("generate"), r.info.status) for r in killed) == [
        (False, "KILLED"), (True, "KILLED")], "the cancelled run and its stage are marked KILLED in MLflow"
    stage_runs = [r for r in runs if r.info.run_name == "generate" and r.info.status == "FINISHED"]
    assert sorted(r.data.tags["cached"] for r in stage_runs)[0] == "false"  # the stage really ran once
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project, capture_output=True,
                           text=True, check=True).stdout
    assert f'"{flow_run.name}"' in shown, "the triggered run is a DVC experiment of the project"
    assert not (project / "data/raw/synth").exists(), "a run from the UI leaves the working tree alone"
