"""Sub-flows, one per part of the pipeline; each runs its selected stages in order through `step`."""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict

from tasks.routing import overrides as route
from tasks.routing import relocate
from tasks.stage_task import RunContext, record_cached_stage, run_stage, still_valid
from tasks.stages import Configs, merge_configs, spec

PARTS: dict[str, tuple[str, ...]] = {
    "data": ("generate", "validate", "tokenizer"),
    "pruning": ("score", "prune"),
    "training": ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft"),
    "evaluation": ("eval",),
    "deployment": ("finetune", "quantize", "eval_quantized"),
}
QUANTIZED_EVAL_DIR = "runs/eval_quantized"


class Plan(BaseModel):
    """What a pipeline run does: the params file, flow-parameter overrides, the selected stages, where it tracks."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    params_file: str
    values: dict[str, Any]
    selected: list[str]
    run: RunContext


def step(stage: str, plan: Plan, extra: Configs | None = None) -> str | None:
    """Run `stage` if selected; a cache hit whose output was since deleted or rewritten is recomputed."""
    if stage not in plan.selected:
        return None
    overrides = merge_configs(route(stage, plan.values, plan.params_file), extra)
    config = spec(stage).load(plan.params_file, overrides)
    state = run_stage(stage, config, plan.run, return_state=True)
    result = state.result()
    if state.name == "Cached":
        if still_valid(result):
            record_cached_stage(stage, config, result["path"], plan.run)
        else:
            result = run_stage.with_options(refresh_cache=True)(stage, config, plan.run)
    return result["path"]


def _steps(part: str, plan: Plan) -> dict[str, str]:
    outputs = {stage: step(stage, plan) for stage in PARTS[part]}
    return {stage: out for stage, out in outputs.items() if out is not None}


@flow(name="data")
def data_flow(plan: Plan) -> dict[str, str]:
    """Generate (or ingest) the synthetic corpus, validate and quarantine it, train the tokenizer."""
    return _steps("data", plan)


@flow(name="pruning")
def pruning_flow(plan: Plan) -> dict[str, str]:
    """DeltaLoss scoring (Ray) and per-subset pruning at the selected keep ratio and method."""
    return _steps("pruning", plan)


@flow(name="training")
def training_flow(plan: Plan) -> dict[str, str]:
    """The five NVILA training stages, each starting from the previous stage's checkpoint."""
    return _steps("training", plan)


@flow(name="evaluation")
def evaluation_flow(plan: Plan) -> dict[str, str]:
    """Evaluate the trained model on the test splits."""
    return _steps("evaluation", plan)


@flow(name="deployment")
def deployment_flow(plan: Plan) -> dict[str, str]:
    """Fine-tune, quantize (W8A8 vision tower, W4A16 LLM) and evaluate the quantized model."""
    outputs = {stage: step(stage, plan) for stage in ("finetune", "quantize")}
    if "eval_quantized" in plan.selected:
        quantized = outputs["quantize"] or spec("quantize").output(spec("quantize").load(plan.params_file))
        root = plan.values.get("output_root")
        extra = {"eval": {"checkpoint": quantized, "out_dir": relocate(QUANTIZED_EVAL_DIR, root) if root else
                          QUANTIZED_EVAL_DIR}}
        outputs["eval_quantized"] = step("eval_quantized", plan, extra)
    return {stage: out for stage, out in outputs.items() if out is not None}
