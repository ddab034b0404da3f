"""The pruning sweep: for each keep ratio and method, prune, train the five stages and evaluate; then compare."""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

from typing import Any

from prefect import flow

from flows.pipeline import Preset, PruneMethod, nvila_pipeline
from tasks.stages import TRAIN_STAGES
from tasks.sweep import compare_points

HEAD = ["generate", "validate", "tokenizer", "score"]


@flow(name="pruning-sweep", log_prints=True)
def pruning_sweep(
    keep_ratios: list[float] | None = None,
    methods: list[PruneMethod] | None = None,
    preset: Preset | None = None,
    experiment: str = "nvila-sweep",
    params_file: str = "params.yaml",
    output_root: str = "runs/sweep",
) -> list[dict[str, Any]]:
    """Score once, then one pipeline run per (method, keep ratio) with outputs under `<output_root>/<method>-<r>`;
    publishes the comparison (table + accuracy-vs-training-time plot) to Prefect and MLflow.
    Defaults: keep ratios 0.9, 0.7, 0.5 and both methods (deltaloss, random)."""
    keep_ratios = keep_ratios or [0.9, 0.7, 0.5]
    methods = methods or ["deltaloss", "random"]
    common = {"preset": preset, "experiment": experiment, "params_file": params_file, "registered_model": ""}
    nvila_pipeline(stages=HEAD, **common)
    points = []
    for method in methods:
        for ratio in keep_ratios:
            result = nvila_pipeline(stages=["prune", *TRAIN_STAGES, "eval"], keep_ratio=ratio, prune_method=method,
                                    output_root=f"{output_root}/{method}-{ratio:g}", **common)
            points.append({"method": method, "keep_ratio": ratio, "mlflow_run_id": result["mlflow_run_id"],
                           "eval": result.get("eval")})
    return compare_points(points, experiment)
