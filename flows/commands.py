"""`nvila pipeline run|sweep|frontier|serve|trigger|stages` and `nvila ui`: the orchestration commands of the `nvila`
CLI."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from flows.services import prefect_api
from tasks.env import project_dir

pipeline_app = typer.Typer(help="Run, serve and trigger the Prefect pipeline flow.", no_args_is_help=True)

PARAMS_OPT = typer.Option("params.yaml", "--params", help="params file (relative to the project root)")
SET_OPT = typer.Option([], "--set", help="KEY.FIELD=VALUE setting for this run, e.g. image_sft.epochs=5 "
                       "(repeatable; VALUE is YAML; as `dvc exp run -S`)")


class Interrupted(Exception):  # noqa: N818 - the user's Ctrl-C, not an error of ours
    """Ctrl-C (or SIGTERM) stopped a pipeline run: its stage was stopped and its runs marked; `main` says how to
    resume and exits 130. (Click turns a KeyboardInterrupt into a silent exit 130 on its own.)"""


@contextmanager
def interruptible() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted() from None


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _enter_project() -> Path:
    """Run from the project root (dvc.yaml and params.yaml live there). SIGTERM exits normally, so the services
    this process started are shut down by their exit hooks."""
    root = project_dir()
    os.chdir(root)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return root


@pipeline_app.command("run")
def run(
    stages: str | None = typer.Option(None, help="comma-separated stages to run, each with what it needs "
                                      "(default: pipeline.stages)"),
    preset: str | None = typer.Option(None, help="model preset (model.preset)"),
    seed: int | None = typer.Option(None, help="seed of every stage (seed)"),
    keep_ratio: float | None = typer.Option(None, help="DeltaLoss keep ratio (prune.keep_ratio)"),
    prune_method: str | None = typer.Option(None, help="deltaloss | random (prune.method)"),
    experiment: str | None = typer.Option(None, help="MLflow experiment (default: pipeline.experiment)"),
    set_: list[str] = SET_OPT,
    init_checkpoint: str | None = typer.Option(None, help="a released NVILA checkpoint folder to import, fine-tune, "
                                               "quantize and evaluate instead of training from scratch"),
    apply: bool = typer.Option(True, "--apply/--no-apply", help="bring the finished run's params, dvc.lock and "
                               "outputs into this working tree (dvc exp apply)"),
    params: str = PARAMS_OPT,
) -> None:
    """Run the pipeline now as a DVC experiment (a Prefect server on 127.0.0.1 unless PREFECT_API_URL is set)."""
    root = _enter_project()
    from flows.config import check_params, load_pipeline_config, parse_overrides, run_overrides

    cfg = load_pipeline_config(params)
    overrides = parse_overrides(set_) or None
    # Settings are checked here too, so a mistake is one line before any server starts (the flow checks them again
    # for runs triggered from the UI).
    check_params(root / params, run_overrides({"preset": preset, "seed": seed, "keep_ratio": keep_ratio,
                                               "prune_method": prune_method}, overrides))
    start = time.monotonic()
    with interruptible(), prefect_api(root):
        from flows.pipeline import nvila_pipeline

        result = nvila_pipeline(preset=preset, stages=_split(stages) or cfg.stages, seed=seed, keep_ratio=keep_ratio,
                                prune_method=prune_method, overrides=overrides,
                                experiment=experiment or cfg.experiment, params_file=params,
                                registered_model=cfg.registered_model, best_metric=cfg.best_metric, apply=apply,
                                init_checkpoint=init_checkpoint)
    _print_summary(root, result, time.monotonic() - start)


def _print_summary(root: Path, result: dict[str, Any], seconds: float) -> None:
    from tasks.report import markdown_table
    from tasks.tracking import tracking_uri, ui_url

    ran = [s for s, how in result["stages"].items() if how == "ran"]
    typer.echo(f"\nPipeline finished in {seconds / 60:.1f} min: DVC experiment {result['experiment']}, "
               f"{len(ran)} stage(s) ran, {len(result['stages']) - len(ran)} restored from the cache.")
    typer.echo("  " + ", ".join(f"{stage} {result['stage_seconds'][stage]:.0f}s ({how})"
                                for stage, how in result["stages"].items()))
    for column, metrics in result["metrics"].items():
        if "acc_mean" in metrics:
            typer.echo(f"Mean accuracy, {column}: {metrics['acc_mean']:.3f} "
                       f"(chance {metrics.get('chance_mean', float('nan')):.3f})")
    if result["metrics"]:
        typer.echo(markdown_table({name: {k: v for k, v in m.items() if k.startswith(("acc_", "chance_"))}
                                   for name, m in result["metrics"].items()}))
    where = ("this working tree (runs/, data/)" if result["applied"] else
             "the DVC experiment (a partial run is not applied to this tree; see `dvc exp show`)")
    typer.echo(f"Outputs: {where}; `dvc exp show` compares runs.")
    typer.echo(f"MLflow run {result['mlflow_run_id']} in {tracking_uri()}")
    typer.echo(f"UIs: `make ui` (or `nvila ui`), then Prefect http://127.0.0.1:4200, MLflow {ui_url()}")


@pipeline_app.command("sweep")
def sweep(
    keep_ratios: str | None = typer.Option(None, help="comma-separated keep ratios, 1 = all data (default: sweep:)"),
    methods: str | None = typer.Option(None, help="comma-separated pruning methods (default: sweep.methods)"),
    preset: str | None = typer.Option(None, help="model preset (model.preset)"),
    seed: int | None = typer.Option(None, help="seed of every stage (seed)"),
    experiment: str | None = typer.Option(None, help="MLflow experiment (default: sweep.experiment)"),
    set_: list[str] = SET_OPT,
    report_dir: str = typer.Option("runs/sweep", help="folder of the comparison table and plot"),
    params: str = PARAMS_OPT,
) -> None:
    """Pruning sweep: one pipeline run per keep ratio and method (shared upstream restored from the cache)."""
    root = _enter_project()
    from flows.config import load_sweep_config, parse_overrides

    ratios = [float(r) for r in _split(keep_ratios)] if keep_ratios else None
    overrides = parse_overrides(set_) or None
    with interruptible(), prefect_api(root):
        from flows.sweep import pruning_sweep
        from tasks.sweep import markdown_table

        rows = pruning_sweep(keep_ratios=ratios, methods=_split(methods), preset=preset, seed=seed,
                             experiment=experiment, report_dir=report_dir, params_file=params, overrides=overrides)
    typer.echo(markdown_table(rows, load_sweep_config(params).metric, links=False))


@pipeline_app.command("frontier")
def frontier(
    variants: str | None = typer.Option(None, help="comma-separated variants (default: frontier.variants; all: "
                                        "see flows/variants.py)"),
    quick: bool = typer.Option(False, "--quick", help="the small setting (frontier.quick: smaller corpus, fewer "
                               "steps), a check of the machinery in minutes"),
    preset: str | None = typer.Option(None, help="model preset (model.preset)"),
    seed: int | None = typer.Option(None, help="seed of every stage (seed)"),
    experiment: str | None = typer.Option(None, help="MLflow experiment (default: frontier.experiment)"),
    report_dir: str | None = typer.Option(None, help="folder of frontier.{md,json,png} (default: "
                                          "frontier.report_dir)"),
    set_: list[str] = SET_OPT,
    params: str = PARAMS_OPT,
) -> None:
    """The efficient frontier: every variant trained and evaluated on the same corpus, accuracy against training
    time, steps and TTFT, the paper's goals judged."""
    root = _enter_project()
    from flows.config import parse_overrides

    overrides = parse_overrides(set_) or None
    start = time.monotonic()
    with prefect_api(root):
        from flows.frontier import efficient_frontier

        report = efficient_frontier(variants=_split(variants), quick=quick, preset=preset, seed=seed,
                                    experiment=experiment, report_dir=report_dir, params_file=params,
                                    overrides=overrides)
    from tasks.frontier_goals import verdict

    for goal in report["goals"]:
        typer.echo(f"{verdict(goal):>26}: {goal['claim']}\n{'':>28}{goal['numbers']}")
    typer.echo(f"\nFrontier finished in {(time.monotonic() - start) / 60:.1f} min; report in "
               f"{report['files']['md']} (and .json, .png), MLflow run {report['mlflow_run_id']}.")


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
    from flows.deploy import trigger_deployment

    flow_run = trigger_deployment(name, parameter, timeout)
    typer.echo(f"flow run {flow_run.name} ({flow_run.id}): {flow_run.state.name if flow_run.state else 'unknown'}")


@pipeline_app.command("compare")
def compare(
    a: str = typer.Argument(..., help="a DVC experiment (or git revision), or an evaluation folder"),
    b: str = typer.Argument(..., help="the other one, the same way"),
    stage: str = typer.Option("eval", help="the evaluation stage whose answers to compare (e.g. eval_quantized, "
                                           "eval_peer@llava)"),
) -> None:
    """Two runs' test answers side by side: per subset and mean, each one's accuracy and the paired difference A - B
    with its standard error (same questions); `*` marks a difference beyond 1.96 standard errors."""
    root = _enter_project()
    from nvila_model.evaluate import paired_table

    table = paired_table(*(_answers_of(root, which, stage) for which in (a, b)))
    typer.echo("| subset | A % | B % | A - B points | answers |\n|---|---|---|---|---|")
    for row in table:
        typer.echo(f"| {row['subset']} | {100 * row['a']:.1f} | {100 * row['b']:.1f} | {100 * row['diff']:+.1f} ± "
                   f"{100 * row['se']:.1f}{' *' if row['resolved'] else ''} | {row['paired']:.0f} |")
    unpaired = table[-1]["unpaired"]
    where = "" if Path(a).is_dir() and Path(b).is_dir() else f" ({stage})"
    typer.echo(f"A: {a}, B: {b}{where}; ± one standard error, paired on the same questions"
               + (f"; {unpaired:.0f} answers only one of them gave are left out" if unpaired else "") + ".")


def _answers_of(root: Path, which: str, stage: str) -> list[dict[str, Any]]:
    """The answers of `stage` in a DVC experiment or git revision of the project, or of an evaluation folder."""
    from tasks.dvc_stages import output_dir
    from tasks.report import parse_answers, read_answers

    if Path(which).is_dir():
        answers = read_answers(which)
        if not answers:
            raise typer.BadParameter(f"{which}: no predictions.jsonl (an evaluation stage's folder holds one)")
        return answers
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import RevError

    rev = next((e["rev"] for e in dvc.api.exp_show(repo=str(root)) if e.get("Experiment") == which), which)
    path = (output_dir(root, stage) / "predictions.jsonl").relative_to(root)
    try:
        text = dvc.api.read(str(path), repo=str(root), rev=rev)
    except (DvcException, RevError, FileNotFoundError) as exc:
        raise typer.BadParameter(f"{which}: no {path} there (not an experiment, revision or evaluation folder, or "
                                 f"its run had no {stage}): {exc}") from None
    return parse_answers(text)


@pipeline_app.command("stages")
def stages() -> None:
    """List the pipeline's stages in order (from dvc.yaml) with what each depends on."""
    root = _enter_project()
    from tasks.dvc_stages import stage_graph

    order, needs = stage_graph(root)
    for stage in order:
        typer.echo(f"{stage:16s} needs {', '.join(sorted(needs[stage])) or '-'}")


def ui(
    prefect_port: int = typer.Option(4200, help="Prefect server port on 127.0.0.1"),
    mlflow_port: int = typer.Option(5000, help="MLflow UI port on 127.0.0.1"),
    params: str = PARAMS_OPT,
) -> None:
    """Start the Prefect server and MLflow UI on 127.0.0.1 and serve the pipeline deployment (Ctrl-C stops all)."""
    _enter_project()
    from flows.services import check_port_free, prefect_env

    check_port_free(prefect_port, "--prefect-port")  # both before starting anything
    check_port_free(mlflow_port, "--mlflow-port")

    os.environ.update(prefect_env(prefect_port))  # before prefect is imported: its settings are read once
    from flows.deploy import run_ui

    run_ui(prefect_port, mlflow_port, params)


def register(app: typer.Typer) -> None:
    """Add `nvila pipeline ...` and `nvila ui` to the main app."""
    app.add_typer(pipeline_app, name="pipeline")
    app.command("ui")(ui)
