"""Serve the pipeline deployment on a real Prefect server: a run triggered through the API executes a real stage, and
the cron schedule creates a run that completes (a broken scheduler fails here)."""

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
            flow_run = run_deployment(DEPLOYMENT, parameters={"stages": ["generate"]}, timeout=240)
            assert flow_run.state is not None and flow_run.state.is_completed(), (
                f"{flow_run.state}\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
            scheduled = asyncio.run(_scheduled_run(DEPLOYMENT, 200))
        assert scheduled.state.is_completed(), (f"{scheduled.state}\n{(tmp_path / 'server.log').read_text()[-3000:]}"
                                               f"\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
    finally:
        stop(serve)
        stop(server)
    # the run tracked to the project's MLflow store, tagged with its Prefect flow-run id
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_runs(
        [MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_experiment_by_name("nvila").experiment_id]
    )
    parents = {r.data.tags["prefect.flow_run_id"] for r in runs if r.data.tags.get("kind") == "pipeline"}
    assert {str(flow_run.id), str(scheduled.id)} <= parents
    stage_runs = [r for r in runs if r.info.run_name == "generate"]
    assert sorted(r.data.tags["cached"] for r in stage_runs)[0] == "false"  # the stage really ran once
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project, capture_output=True,
                           text=True, check=True).stdout
    assert f'"{flow_run.name}"' in shown, "the triggered run is a DVC experiment of the project"
    assert not (project / "data/raw/synth").exists(), "a run from the UI leaves the working tree alone"
