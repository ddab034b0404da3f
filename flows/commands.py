"""`nvila pipeline run|serve|trigger|stages` and `nvila ui`: the orchestration commands of the `nvila` CLI."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import typer

from tasks.env import configure

pipeline_app = typer.Typer(help="Run, serve and trigger the Prefect pipeline flow.", no_args_is_help=True)

PARAMS_OPT = typer.Option("params.yaml", "--params", help="params file (relative to the project root)")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _enter_project() -> Path:
    """Run from the project root (stage paths in params.yaml are relative to it). SIGTERM exits normally, so the
    ephemeral Prefect server and the Ray instance this process started are shut down by their exit hooks."""
    root = configure()
    os.chdir(root)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return root


@pipeline_app.command("run")
def run(
    preset: str | None = typer.Option(None, help="model preset (default: params.yaml model.preset)"),
    stages: str | None = typer.Option(None, help="comma-separated stages to run (default: pipeline.stages)"),
    datasets: str | None = typer.Option(None, help="comma-separated dataset subsets"),
    seed: int | None = typer.Option(None, help="seed for every stage that has one"),
    keep_ratio: float | None = typer.Option(None, help="DeltaLoss keep ratio (prune.keep_ratio)"),
    prune_method: str | None = typer.Option(None, help="deltaloss | random (prune.method)"),
    experiment: str | None = typer.Option(None, help="MLflow experiment (default: pipeline.experiment)"),
    set_: list[str] = typer.Option([], "--set", help="KEY.FIELD=VALUE config override, e.g. "
                                   "image_sft.epochs=5 (repeatable; VALUE is YAML)"),
    params: str = PARAMS_OPT,
) -> None:
    """Run the full pipeline now (ephemeral Prefect API unless PREFECT_API_URL is set; embedded MLflow)."""
    root = _enter_project()
    from flows.config import flow_parameters, load_pipeline_config, parse_overrides
    from flows.pipeline import nvila_pipeline

    cfg = load_pipeline_config(params, preset=preset, stages=_split(stages), datasets=_split(datasets), seed=seed,
                               keep_ratio=keep_ratio, prune_method=prune_method, experiment=experiment)
    overrides = parse_overrides(set_)
    start = time.monotonic()
    result = nvila_pipeline(**flow_parameters(cfg, params), overrides=overrides or None)
    _print_summary(root, result, time.monotonic() - start)


def _print_summary(root: Path, result: dict[str, str], seconds: float) -> None:
    from tasks.tracking import tracking_uri, ui_url

    typer.echo(f"\nPipeline finished in {seconds / 60:.1f} min. Outputs (under {root}):")
    for stage, path in result.items():
        if stage != "mlflow_run_id":
            typer.echo(f"  {stage:16s} {path}")
    for name in ("runs/eval/metrics.json", "runs/eval_quantized/metrics.json"):
        if (root / name).is_file():
            typer.echo(f"{name}: {json.dumps(json.loads((root / name).read_text()))[:400]}")
    typer.echo(f"MLflow run {result.get('mlflow_run_id')} in {tracking_uri()}")
    typer.echo("Open the UIs:  make ui   (or: nvila ui)  then")
    typer.echo(f"  Prefect: http://127.0.0.1:4200    MLflow: {ui_url()}")
    typer.echo("MLflow only:   mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri " + tracking_uri())


@pipeline_app.command("sweep")
def sweep(
    keep_ratios: str | None = typer.Option(None, help="comma-separated keep ratios, 1 = all data (default: sweep:)"),
    methods: str | None = typer.Option(None, help="comma-separated pruning methods (default: sweep.methods)"),
    preset: str | None = typer.Option(None, help="model preset (default: params.yaml model.preset)"),
    seed: int | None = typer.Option(None, help="seed of every stage that has one"),
    experiment: str | None = typer.Option(None, help="MLflow experiment (default: sweep.experiment)"),
    params: str = PARAMS_OPT,
) -> None:
    """Pruning sweep: SFT and eval per keep ratio and method on shared pre-training; accuracy vs training time."""
    _enter_project()
    from flows.config import load_sweep_config
    from flows.sweep import pruning_sweep
    from tasks.sweep import markdown_table

    ratios = [float(r) for r in _split(keep_ratios)] if keep_ratios else None
    rows = pruning_sweep(keep_ratios=ratios, methods=_split(methods), preset=preset, seed=seed,
                         experiment=experiment, params_file=params)
    typer.echo(markdown_table(rows, load_sweep_config(params).metric, links=False))


@pipeline_app.command("serve")
def serve(
    name: str | None = typer.Option(None, help="deployment name (default: pipeline.deployment)"),
    cron: str | None = typer.Option(None, help="cron schedule (default: pipeline.cron)"),
    stages: str | None = typer.Option(None, help="comma-separated default stages of the deployment"),
    params: str = PARAMS_OPT,
) -> None:
    """Serve the pipeline deployment (cron re-training) on the Prefect API at PREFECT_API_URL; blocks."""
    _enter_project()
    from flows.deploy import serve_pipeline

    serve_pipeline(params, name=name, cron=cron, parameters={"stages": _split(stages)} if stages else None)


@pipeline_app.command("trigger")
def trigger(
    name: str = typer.Option("nvila-pipeline/nvila-retrain", help="flow/deployment name"),
    parameter: list[str] = typer.Option([], "--param", "-p", help="flow parameter as key=JSON value (repeatable)"),
    timeout: float = typer.Option(0, help="seconds to wait for the run to finish (0: do not wait)"),
) -> None:
    """Trigger a served deployment through the Prefect API (what the UI's Run button does)."""
    _enter_project()
    from prefect.deployments import run_deployment

    parameters = {}
    for item in parameter:
        key, _, raw = item.partition("=")
        try:
            parameters[key] = json.loads(raw)
        except json.JSONDecodeError:
            parameters[key] = raw
    flow_run = run_deployment(name, parameters=parameters, timeout=timeout)
    typer.echo(f"flow run {flow_run.name} ({flow_run.id}): {flow_run.state.name if flow_run.state else 'unknown'}")


@pipeline_app.command("stages")
def stages() -> None:
    """List the pipeline stages in order and whether each one's library entry point is importable."""
    _enter_project()
    from tasks.stages import ORDER, available, spec

    for stage in ORDER:
        typer.echo(f"{stage:16s} {spec(stage).entry:45s} {'ok' if available(stage) else 'not importable'}")


def ui(
    prefect_port: int = typer.Option(4200, help="Prefect server port on 127.0.0.1"),
    mlflow_port: int = typer.Option(5000, help="MLflow UI port on 127.0.0.1"),
    params: str = PARAMS_OPT,
) -> None:
    """Start the Prefect server and MLflow UI on 127.0.0.1 and serve the pipeline deployment (Ctrl-C stops all)."""
    _enter_project()
    from flows.services import prefect_env

    os.environ.update(prefect_env(prefect_port))  # before prefect is imported: its settings are read once
    from flows.deploy import run_ui

    run_ui(prefect_port, mlflow_port, params)


def register(app: typer.Typer) -> None:
    """Add `nvila pipeline ...` and `nvila ui` to the main app."""
    app.add_typer(pipeline_app, name="pipeline")
    app.command("ui")(ui)
