"""The full NVILA pipeline flow: data -> pruning -> five training stages -> eval -> fine-tune/quantize -> eval."""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run

from flows.parts import PARTS, Plan, data_flow, deployment_flow, evaluation_flow, pruning_flow, training_flow
from nvila_model.params import read_params
from tasks.report import close_pipeline_run, open_pipeline_run, publish_report, register_model
from tasks.stages import ORDER, spec

Preset = Literal["tiny", "small", "nvila-8b", "nvila-lite-8b"]
PruneMethod = Literal["deltaloss", "random"]
StageName = Literal[
    "generate", "validate", "tokenizer", "score", "prune", "projector_init", "vision_pretrain", "token_pretrain",
    "image_sft", "video_sft", "eval", "finetune", "quantize", "eval_quantized",
]
SUBFLOWS = {"data": data_flow, "pruning": pruning_flow, "training": training_flow, "evaluation": evaluation_flow,
            "deployment": deployment_flow}
assert tuple(s for part in PARTS.values() for s in part) == ORDER


def _run_name() -> str:
    return str(flow_run.name or "nvila-pipeline")


@flow(name="nvila-pipeline", log_prints=True)
def nvila_pipeline(
    preset: Preset | None = None,
    stages: list[StageName] | Literal["all"] = "all",
    datasets: list[str] | None = None,
    seed: int | None = None,
    keep_ratio: float | None = None,
    prune_method: PruneMethod | None = None,
    experiment: str = "nvila",
    params_file: str = "params.yaml",
    registered_model: str = "nvila-{preset}",
    best_metric: str = "acc_mean",
    output_root: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Run the selected stages (default all) in pipeline order; unset parameters come from params.yaml.

    Returns the output path of each stage that ran, plus `mlflow_run_id`. Tracks one MLflow parent run with a
    child run per stage, publishes the eval metrics as a Prefect artifact,
    and registers the trained (and quantized) model as `registered_model` ("" skips it), moving the `best` alias
    to the best version by `best_metric`. `output_root` moves the outputs of the SFT stages and what follows them
    from `runs/` to another folder (sweep points). `overrides` sets config fields per params key, e.g.
    `{"image_sft": {"epochs": 5, "max_steps": -1}}`, for every stage that reads the key.
    """
    selected = list(ORDER) if stages == "all" else [s for s in ORDER if s in stages]
    unknown = sorted(set(overrides or {}) - {key for stage in ORDER for key, _ in spec(stage).keys})
    if unknown:
        raise ValueError(f"overrides: no stage reads params key(s) {unknown}")
    preset = preset or read_params(params_file).get("model", {}).get("preset", "tiny")
    values: dict[str, Any] = {"preset": preset, "seed": seed, "datasets": datasets, "keep_ratio": keep_ratio,
                              "prune_method": prune_method, "output_root": output_root, "stages": selected,
                              "overrides": overrides}
    run = open_pipeline_run(experiment, _run_name(), {**values, "params_file": params_file})
    plan = Plan(params_file=params_file, values=values, selected=selected, run=run)
    ok = False
    try:
        outputs: dict[str, str] = {}
        for part, subflow in SUBFLOWS.items():
            if any(stage in selected for stage in PARTS[part]):
                outputs.update(subflow(plan))
        evals = {name: outputs[stage] for name, stage in (("trained", "eval"), ("quantized", "eval_quantized"))
                 if stage in outputs}
        publish_report(run, evals, outputs)
        name = registered_model.format(preset=preset)
        if name and "video_sft" in outputs:
            register_model(run, outputs["video_sft"], name, best_metric, outputs.get("eval"))
        if name and "quantize" in outputs:
            register_model(run, outputs["quantize"], f"{name}-quantized", best_metric, outputs.get("eval_quantized"))
        ok = True
        return {**outputs, "mlflow_run_id": run.parent_run_id}
    finally:
        close_pipeline_run(run, ok)
