"""The pipeline flow: one Prefect task per DVC stage, in a private workspace, saved as a DVC experiment.

The stages, their order and what each needs come from `dvc.yaml` (through DVC's API). A run:
1. checks the whole params file with the run's parameters written in (one line per problem, nothing started);
2. opens a git worktree of the project (its uncommitted changes included) sharing the DVC cache, and writes the
   run's parameters into its params.yaml, as `dvc exp run -S` does;
3. runs each selected stage (and what it needs) with `dvc repro --single-item`: unchanged stages are restored from
   DVC's run-cache, the others computed; each stage is a Prefect task and an MLflow child run; stages that do not
   depend on each other run at once (`pipeline.parallel_stages`), sharing the cores;
4. saves the workspace as a DVC experiment named after the flow run and pushes its outputs to the default remote;
5. reports (MLflow metrics and plots, the Prefect artifact when it evaluated, the model registry);
6. with `apply`, brings the experiment into the project's working tree (`dvc exp apply`).
"""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run

from flows.config import PipelineConfig, check_params, run_overrides
from nvila_model.manifest import git_revision
from nvila_model.params import ORCHESTRATION_KEYS, parse, read_params
from tasks import liveness
from tasks.dvc_stages import out_paths, output_dir, plan, stage_graph
from tasks.env import project_dir
from tasks.report import (
    close_pipeline_run,
    open_pipeline_run,
    publish_report,
    read_answers,
    read_metrics,
    register_model,
)
from tasks.stage_task import RunContext, run_stages
from tasks.tracking import dvc_lock_hashes, flatten, run_status, tracking_file
from tasks.warm import serving
from tasks.workspace import (
    Workspace,
    apply_experiment,
    check_writable,
    save_experiment,
    set_params,
    valid_name,
    workspace,
)

TRAINING = ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")


def chains(data: dict[str, Any], registered_model: str) -> list[dict[str, str]]:
    """The models a run trains or adapts, and the dvc.yaml stages of each: its report column, its eval stages, the
    stages whose outputs are registered, and under which name. From scratch by default; with `init_checkpoints`,
    each released checkpoint's chain (the `@name` stages) instead; plus each peer of `peers` (evaluated, not
    quantized nor registered: column `peer-<family>`)."""
    peers = [{"column": f"peer-{family}", "eval": f"eval_peer@{family}", "eval_quantized": "",
              "model": f"peer@{family}", "quantized": "", "registered": ""} for family in data.get("peers") or []]
    if not data["init_checkpoints"]:
        return [{"column": "trained", "eval": "eval", "eval_quantized": "eval_quantized", "model": "video_sft",
                 "quantized": "quantize", "registered": registered_model.format(preset=data["model"]["preset"])},
                *peers]
    return [{"column": name, "eval": f"eval_imported@{name}", "eval_quantized": f"eval_quantized_imported@{name}",
             "model": f"finetune_imported@{name}", "quantized": f"quantize_imported@{name}",
             "registered": registered_model and f"nvila-{name}"} for name in data["init_checkpoints"]] + peers


def thread_graph(root: Path, order: list[str], every_target: list[str] | None) -> dict[str, set[str]]:
    """The stage graph each stage's threads follow from (`stage_threads`): what a run of every stage computes with
    the workspace's params (every stage of dvc.yaml, or with `init_checkpoints` the imported chains: `every_target`
    and what they need), plus the run's own plan. So a partial run computes a stage as the full run does, and an
    imported chain is not held to a share of the cores by from-scratch stages that never run beside it."""
    needs = stage_graph(root)[1]
    return {stage: needs[stage] for stage in {*plan(root, every_target), *order}}


def effective_params(data: dict[str, Any], stages: list[str]) -> dict[str, Any]:
    """The parent run's params: each flow parameter's effective value, and every setting of the run's params file."""
    library = {k: v for k, v in data.items() if k not in (*ORCHESTRATION_KEYS, "train_defaults")}
    return {"preset": data["model"]["preset"], "seed": data["seed"], "keep_ratio": data["prune"]["keep_ratio"],
            "prune_method": data["prune"]["method"], "stages": ",".join(stages), **flatten(library)}


def training_cost(ws: Workspace, order: list[str]) -> dict[str, dict[str, float]]:
    """Seconds, optimizer steps and records of each training stage of the run (the five stages, the peers), from
    its `meta.json` (restored stages report the time their model took to train); and for `score`, the DeltaLoss
    proxies' training plus the scoring itself (records: those scored)."""
    cost = {}
    for stage in (s for s in order if s in TRAINING or s.startswith("peer@")):
        meta = json.loads((output_dir(ws.root, stage) / "meta.json").read_text())
        cost[stage] = {"train_seconds": float(meta["train_seconds"]), "train_steps": float(meta["global_steps"]),
                       "train_records": float(meta["num_train_records"])}
    if "score" in order:
        scores, scorers = out_paths(ws.root, "score")
        summary = json.loads((scores / "summary.json").read_text())
        proxies = [json.loads(p.read_text()) for p in sorted(scorers.rglob("meta.json"))]
        cost["score"] = {"train_seconds": summary["seconds"] + sum(float(m["train_seconds"]) for m in proxies),
                         "train_steps": float(sum(m["global_steps"] for m in proxies)),
                         "train_records": float(summary["num_records"])}
    return cost


def pruning_effect(ws: Workspace, order: list[str]) -> dict[str, float]:
    """The share of each injected defect kind (`noise`: wrong answers, `duplicate`) that the run's `prune` removed
    (its `summary.json`); empty when the run has no `prune` or the corpus tags no defects (real data)."""
    if "prune" not in order:
        return {}
    summary = json.loads((output_dir(ws.root, "prune") / "summary.json").read_text())
    return {kind: float(share) for kind, share in summary["defects_removed_share"].items()}


def eval_columns(models: list[dict[str, str]], order: list[str]) -> dict[str, str]:
    """The run's evaluation stages by the report column they fill (`trained`, `quantized`, a peer's or released
    checkpoint's name, `-quantized` after it)."""
    columns = {}
    for chain in models:
        for suffix, stage in (("", chain["eval"]), ("-quantized", chain["eval_quantized"])):
            if stage in order:
                columns[("quantized" if chain["column"] == "trained" else chain["column"] + suffix) if suffix
                        else chain["column"]] = stage
    return columns


def _report(run: RunContext, ws: Workspace, order: list[str], results: list[dict[str, Any]], experiment: str,
            models: list[dict[str, str]], evals: dict[str, str], best_metric: str) -> dict[str, dict[str, float]]:
    """Metrics to the parent run, the Prefect artifact (only when the run evaluated), models to the registry;
    `evals`: the run's evaluation stages by report column (`eval_columns`)."""
    columns = {column: read_metrics(output_dir(ws.root, stage)) for column, stage in evals.items()}
    if columns:
        how = {r["stage"]: f"restored from run {r['cached_from']}" if r["cached"] else "ran" for r in results}
        publish_report(run, columns, experiment, how)
    for chain in models:
        for suffix, stage in (("", chain["model"]), ("-quantized", chain["quantized"])):
            if chain["registered"] and stage in order:
                column = "quantized" if suffix and chain["column"] == "trained" else chain["column"] + suffix
                value = columns.get(column, {}).get(best_metric)
                register_model(run, output_dir(ws.root, stage), chain["registered"] + suffix, best_metric, value)
    return columns


@flow(name="nvila-pipeline", log_prints=True)
def nvila_pipeline(
    preset: str | None = None,
    stages: list[str] | Literal["all"] = "all",
    seed: int | None = None,
    keep_ratio: float | None = None,
    prune_method: str | None = None,
    overrides: dict[str, Any] | None = None,
    experiment: str = "nvila",
    params_file: str = "params.yaml",
    registered_model: str = "nvila-{preset}",
    best_metric: str = "acc_mean",
    apply: bool = False,
    init_checkpoint: str | None = None,
) -> dict[str, Any]:
    """Run the selected stages (default all; each with what it needs) as a DVC experiment.

    `preset`, `seed`, `keep_ratio` and `prune_method` set `model.preset`, `seed`, `prune.keep_ratio` and
    `prune.method`; `overrides` sets any other setting by its dotted name (`{"image_sft.epochs": 5}`), like
    `dvc exp run -S`. Unset parameters keep params.yaml's values. `init_checkpoint` (a released NVILA checkpoint
    folder) adapts that model instead of training one: it is imported, fine-tuned, quantized, evaluated and
    registered (an `init_checkpoints` entry named after the folder). `apply` brings the finished experiment into the
    project's working tree (a run of every stage only). Returns the experiment name, the MLflow parent run, what
    each stage did, the eval metrics, each evaluation's answers (`id`, `subset`, `correct`, for paired comparisons),
    the training stages' cost and the share of each injected defect that `prune` removed.
    """
    project = project_dir()
    settings = run_overrides({"preset": preset, "seed": seed, "keep_ratio": keep_ratio,
                              "prune_method": prune_method}, overrides)
    if init_checkpoint:
        folder = Path(init_checkpoint).expanduser().resolve()
        settings[f"init_checkpoints.{valid_name(folder.name, strict=True)}"] = str(folder)
    data = check_params(project / params_file, settings)
    models = chains(data, registered_model)
    every_target = [s for m in models for s in (m["eval"], m["eval_quantized"]) if s]
    targets = list(stages) if stages != "all" else every_target
    name = valid_name(str(flow_run.name or "nvila-run"))
    check_writable(project, [p for p in (tracking_file(),) if p is not None])
    liveness.reap_stale(project)
    with workspace(project, name) as ws:
        if settings:
            set_params(ws.root / params_file, settings)
        assert read_params(ws.root / params_file) == data, "the workspace's params differ from the checked ones"
        # The stages and their order come from the workspace's dvc.yaml with the run's params (`@name` stages
        # exist once params name them); everything upstream of the targets comes along, restored when unchanged.
        order = plan(ws.root, None if stages == "all" and not data["init_checkpoints"] else targets)
        run = open_pipeline_run(experiment, name, effective_params(data, order),
                                {"git.revision": git_revision(project), "partial": str(stages != "all").lower()})
        status, tags = run_status(False), {}
        liveness.register(project, name, str(flow_run.id), run.parent_run_id)
        try:
            with serving(ws.env()) as launch:  # stage commands fork from a process with the libraries imported
                staged = dataclasses.replace(ws, launch=tuple(launch.items()))
                parallel = parse(PipelineConfig, data.get("pipeline"), f"{params_file}: pipeline").parallel_stages
                graph = thread_graph(ws.root, order, every_target if data["init_checkpoints"] else None)
                results = run_stages(order, graph, staged, run, parallel)
            exp = save_experiment(ws, order)
            tags = {"dvc.experiment": exp, **dvc_lock_hashes(ws.root)}
            evals = eval_columns(models, order)
            columns = _report(run, ws, order, results, exp, models, evals, best_metric)
            cost = training_cost(ws, order)
            removed = pruning_effect(ws, order)
            answers = {column: read_answers(output_dir(ws.root, stage)) for column, stage in evals.items()}
            status = run_status(True)
        except (KeyboardInterrupt, TerminationSignal):  # Ctrl-C; SIGTERM (a kill, a cancel from the Prefect UI)
            status = "KILLED"
            raise
        finally:
            close_pipeline_run(run, status, tags)
            liveness.unregister(project, name)
    # Only a run of every stage is applied: DVC applies a partial experiment but leaves the stages it did not run
    # without outputs (and fails on them), so the working tree would not be reproducible.
    applied = apply and stages == "all"
    if applied:
        apply_experiment(project, exp)
    return {"experiment": exp, "mlflow_run_id": run.parent_run_id, "applied": applied,
            "stages": {r["stage"]: "restored" if r["cached"] else "ran" for r in results},
            "stage_seconds": {r["stage"]: r["seconds"] for r in results},
            "metrics": columns, "answers": answers, "train_cost": cost, "defects_removed": removed}
