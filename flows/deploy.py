"""Deployments: serve the pipeline flow with its cron schedule, and `nvila ui` (Prefect server + MLflow UI + serve)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from flows.config import PipelineConfig, load_pipeline_config
from flows.pipeline import nvila_pipeline
from flows.services import HOST, start_mlflow_server, start_prefect_server, stop, watch_log
from tasks.env import project_dir


def deployment_parameters(cfg: PipelineConfig, params: str | Path) -> dict[str, object]:
    """Default parameters of the deployment: the `pipeline:` key of params.yaml. Runs triggered from the UI or the
    schedule are DVC experiments that leave the project's working tree alone (`dvc exp apply` brings one in)."""
    return {"stages": cfg.stages, "experiment": cfg.experiment, "params_file": str(params),
            "registered_model": cfg.registered_model, "best_metric": cfg.best_metric, "apply": False}


def trigger_deployment(name: str, items: list[str], timeout: float) -> object:
    """Run deployment `name` with `key=value` parameters (values are JSON, else strings), checked against the
    flow's parameters first: a bad name or value is one line."""
    import json

    from prefect.deployments import run_deployment

    from flows.frontier import efficient_frontier
    from flows.sweep import pruning_sweep

    flow = {"pruning-sweep": pruning_sweep, "efficient-frontier": efficient_frontier}.get(name.split("/")[0],
                                                                                         nvila_pipeline)
    parameters = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        try:
            parameters[key] = json.loads(raw)
        except json.JSONDecodeError:
            parameters[key] = raw
    check_parameters(flow, parameters)
    return run_deployment(name, parameters=parameters, timeout=timeout)


def check_parameters(flow: object, parameters: dict[str, object]) -> None:
    """Validate `parameters` against `flow`'s signature as Prefect will; each problem one line (ValueError)."""
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    unknown = sorted(set(parameters) - set(parameter_schema(flow.fn).properties))
    if unknown:
        raise ValueError(f"parameters {unknown} unknown; the flow takes {sorted(parameter_schema(flow.fn).properties)}")
    try:
        flow.validate_parameters(parameters)
    except ParameterTypeError as exc:
        raise ValueError(parameter_problem(exc)) from None


def parameter_problem(exc: Exception) -> str:
    """Prefect's parameter validation error (which parameter, what is wrong) as one line."""
    return " ".join(str(exc).split())


SWEEP_DEPLOYMENT = "nvila-sweep"
FRONTIER_DEPLOYMENT = "nvila-frontier"


def serve_pipeline(params: str | Path = "params.yaml", name: str | None = None, cron: str | None = None,
                   parameters: dict[str, object] | None = None) -> None:
    """Serve the pipeline deployment (cron schedule from params.yaml), the pruning-sweep deployment and the
    efficient-frontier deployment (no schedule; settings from the `sweep:` / `frontier:` keys), each run when
    triggered from the UI or the API; blocks."""
    from prefect import serve

    from flows.frontier import efficient_frontier
    from flows.sweep import pruning_sweep

    cfg = load_pipeline_config(params)
    pipeline = nvila_pipeline.to_deployment(
        name=name or cfg.deployment,
        schedules=[Cron(cron or cfg.cron, timezone=cfg.timezone)] if (cron or cfg.cron) else [],
        parameters={**deployment_parameters(cfg, params), **(parameters or {})},
        description="NVILA pipeline: data, DeltaLoss pruning, five-stage training, eval, fine-tune, quantize.",
        tags=["nvila"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    sweep = pruning_sweep.to_deployment(
        name=SWEEP_DEPLOYMENT,
        parameters={"params_file": str(params)},
        description="DeltaLoss pruning sweep: SFT and eval per keep ratio and method, accuracy vs training time.",
        tags=["nvila"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    frontier = efficient_frontier.to_deployment(
        name=FRONTIER_DEPLOYMENT,
        parameters={"params_file": str(params)},
        description="The efficient frontier: accuracy against training time and TTFT per variant (NVILA, the "
                    "LLaVA peer, compression, Dynamic-S2, frames, DeltaLoss), the paper's goals judged.",
        tags=["nvila"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    serve(pipeline, sweep, frontier, limit=1)


def run_ui(prefect_port: int = 4200, mlflow_port: int = 5000, params: str | Path = "params.yaml") -> None:
    """Start the Prefect server and the MLflow UI on 127.0.0.1, then serve the deployment until Ctrl-C.

    The Prefect client variables (`flows.services.prefect_env`) must be in the environment before `prefect` is
    imported (`nvila ui` sets them); the server and the flow-run processes inherit them.
    """
    root = project_dir()
    logs = root / ".prefect" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["NVILA_MLFLOW_PORT"] = str(mlflow_port)
    prefect_proc = mlflow_proc = None
    try:
        watch_log(logs / "prefect-server.log", "prefect server")
        prefect_proc = start_prefect_server(prefect_port, log=logs / "prefect-server.log")
        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not tracking.startswith(("http://", "https://")):
            mlflow_proc = start_mlflow_server(mlflow_port, root, log=logs / "mlflow-server.log")
        print(f"Prefect UI: http://{HOST}:{prefect_port}   MLflow UI: http://{HOST}:{mlflow_port}")
        print(f"Logs in {logs}. Trigger the deployment from the Prefect UI (Deployments), Ctrl-C to stop.")
        serve_pipeline(params)
    finally:
        stop(mlflow_proc)
        stop(prefect_proc)
