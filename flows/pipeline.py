"""The pipeline flow: one Prefect task per DVC stage, in a private workspace, saved as a DVC experiment.

The stages, their order and what each needs come from `dvc.yaml` (through DVC's API). A run:
1. checks the whole params file with the run's parameters written in (one line per problem, nothing started);
2. opens a git worktree of the project (its uncommitted changes included) sharing the DVC cache, and writes the
   run's parameters into its params.yaml, as `dvc exp run -S` does;
3. runs each selected stage (and what it needs) with `dvc repro --single-item`: unchanged stages are restored from
   DVC's run-cache, the others computed; each stage is a Prefect task and an MLflow child run;
4. saves the workspace as a DVC experiment named after the flow run and pushes its outputs to the default remote;
5. reports (MLflow metrics and plots, the Prefect artifact when it evaluated, the model registry);
6. with `apply`, brings the experiment into the project's working tree (`dvc exp apply`).
"""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

import json
from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run

from flows.config import check_params, run_overrides
from nvila_model.manifest import git_revision
from nvila_model.params import read_params
from tasks.dvc_stages import output_dir, plan
from tasks.env import project_dir
from tasks.report import close_pipeline_run, open_pipeline_run, publish_report, read_metrics, register_model
from tasks.stage_task import RunContext, run_stage
from tasks.tracking import dvc_lock_hashes, flatten, run_status
from tasks.workspace import Workspace, apply_experiment, save_experiment, set_params, valid_name, workspace

EVALS = {"trained": "eval", "quantized": "eval_quantized"}  # report column -> the stage whose metrics it shows
MODELS = {"": "video_sft", "-quantized": "quantize"}  # registered-model suffix -> the stage whose output it is
TRAINING = ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")


def effective_params(data: dict[str, Any], stages: list[str]) -> dict[str, Any]:
    """The parent run's params: each flow parameter's effective value, and every setting of the run's params file."""
    library = {k: v for k, v in data.items() if k not in ("pipeline", "sweep", "train_defaults")}
    return {"preset": data["model"]["preset"], "seed": data["seed"], "keep_ratio": data["prune"]["keep_ratio"],
            "prune_method": data["prune"]["method"], "stages": ",".join(stages), **flatten(library)}


def training_cost(ws: Workspace, order: list[str]) -> dict[str, dict[str, float]]:
    """Seconds, optimizer steps and records of each training stage of the run, from its `meta.json` (restored
    stages report the time their model took to train)."""
    cost = {}
    for stage in (s for s in TRAINING if s in order):
        meta = json.loads((output_dir(ws.root, stage) / "meta.json").read_text())
        cost[stage] = {"train_seconds": float(meta["train_seconds"]), "train_steps": float(meta["global_steps"]),
                       "train_records": float(meta["num_train_records"])}
    return cost


def _report(run: RunContext, ws: Workspace, order: list[str], results: list[dict[str, Any]], experiment: str,
            registered_model: str, best_metric: str) -> dict[str, dict[str, float]]:
    """Metrics to the parent run, the Prefect artifact (only when the run evaluated), models to the registry."""
    columns = {name: read_metrics(output_dir(ws.root, stage)) for name, stage in EVALS.items() if stage in order}
    if columns:
        how = {r["stage"]: f"restored from run {r['cached_from']}" if r["cached"] else "ran" for r in results}
        publish_report(run, columns, experiment, how)
    for suffix, stage in MODELS.items():
        if registered_model and stage in order:
            value = columns.get("quantized" if suffix else "trained", {}).get(best_metric)
            register_model(run, output_dir(ws.root, stage), registered_model + suffix, best_metric, value)
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
) -> dict[str, Any]:
    """Run the selected stages (default all; each with what it needs) as a DVC experiment.

    `preset`, `seed`, `keep_ratio` and `prune_method` set `model.preset`, `seed`, `prune.keep_ratio` and
    `prune.method`; `overrides` sets any other setting by its dotted name (`{"image_sft.epochs": 5}`), like
    `dvc exp run -S`. Unset parameters keep params.yaml's values. `apply` brings the finished experiment into the
    project's working tree. Returns the experiment name, the MLflow parent run, what each stage did, the eval
    metrics and the training stages' cost.
    """
    project = project_dir()
    settings = run_overrides({"preset": preset, "seed": seed, "keep_ratio": keep_ratio,
                              "prune_method": prune_method}, overrides)
    data = check_params(project / params_file, settings)
    order = plan(project, None if stages == "all" else list(stages))
    partial = stages != "all"
    name = valid_name(str(flow_run.name or "nvila-run"))
    registered = registered_model.format(preset=data["model"]["preset"])
    run = open_pipeline_run(experiment, name, effective_params(data, order),
                            {"git.revision": git_revision(project), "partial": str(partial).lower()})
    status, tags = run_status(False), {}
    try:
        with workspace(project, name) as ws:
            if settings:
                set_params(ws.root / params_file, settings)
            assert read_params(ws.root / params_file) == data, "the workspace's params differ from the checked ones"
            results = [run_stage(stage, ws, run) for stage in order]
            exp = save_experiment(ws, order)
            tags = {"dvc.experiment": exp, **dvc_lock_hashes(ws.root)}
            columns = _report(run, ws, order, results, exp, registered, best_metric)
            cost = training_cost(ws, order)
        if apply:
            apply_experiment(project, exp)
        status = run_status(True)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        close_pipeline_run(run, status, tags)
    return {"experiment": exp, "mlflow_run_id": run.parent_run_id, "applied": apply,
            "stages": {r["stage"]: "restored" if r["cached"] else "ran" for r in results},
            "metrics": columns, "train_cost": cost}
