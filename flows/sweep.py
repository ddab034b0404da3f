"""The pruning sweep: per keep ratio and method, train the SFT stages on the pruned subset and evaluate; compare."""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

from pathlib import Path
from typing import Any

from prefect import flow

from flows.config import load_sweep_config
from flows.pipeline import Preset, PruneMethod, nvila_pipeline
from tasks.routing import RELOCATED, pruned_manifest
from tasks.stages import TRAIN_STAGES, merge_configs, spec
from tasks.sweep import REFERENCE, compare_points

SFT = tuple(s for s in TRAIN_STAGES if s in RELOCATED)  # the stages that train on the pruned subset
SHARED = ("generate", "validate", "tokenizer", "score", "prune", *(s for s in TRAIN_STAGES if s not in SFT))


def sweep_points(keep_ratios: list[float], methods: list[str]) -> list[tuple[str, float]]:
    """(method, ratio) pairs, highest ratio first; ratio 1.0 keeps everything whatever the method, so it is one
    point, labelled `all-data`, trained on `<methods[0]>-1`."""
    ratios = sorted({float(r) for r in keep_ratios}, reverse=True)
    points = [(REFERENCE, 1.0)] if 1.0 in ratios else []
    return points + [(method, ratio) for method in methods for ratio in ratios if ratio < 1.0]


@flow(name="pruning-sweep", log_prints=True)
def pruning_sweep(
    keep_ratios: list[float] | None = None,
    methods: list[PruneMethod] | None = None,
    preset: Preset | None = None,
    seed: int | None = None,
    epochs: dict[str, float] | None = None,
    experiment: str | None = None,
    output_root: str | None = None,
    params_file: str = "params.yaml",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Unset parameters come from the `sweep:` key of params.yaml.

    1. Once, shared by every point: data, DeltaLoss scores, every pruned subset, and the pre-training stages
       (they read no pruned data).
    2. Per point: the SFT stages on `data/pruned/<method>-<ratio>/`, trained for `epochs` (not a step budget,
       so a smaller subset costs less time), and eval; outputs under `<output_root>/<method>-<ratio>/`.
    3. The comparison (accuracy against SFT training time, table and plot) under `output_root`, in an MLflow run
       `pruning-sweep` and as the Prefect artifact `nvila-pruning-sweep`. Returns its rows.
    """
    cfg = load_sweep_config(params_file, keep_ratios=keep_ratios, methods=methods, epochs=epochs,
                            experiment=experiment, output_root=output_root)
    points = sweep_points(cfg.keep_ratios, cfg.methods)
    common: dict[str, Any] = {"preset": preset, "seed": seed, "experiment": cfg.experiment,
                              "params_file": params_file, "registered_model": ""}
    prune = {"keep_ratios": sorted({float(r) for r in cfg.keep_ratios}, reverse=True), "methods": cfg.methods}
    nvila_pipeline(stages=list(SHARED), overrides=merge_configs(overrides, {"prune": prune}), **common)

    per_point = merge_configs(overrides, {stage: {"epochs": float(cfg.epochs[stage]), "max_steps": -1}
                                   for stage in SFT if stage in cfg.epochs})
    prune_cfg = spec("prune").load(params_file, {"prune": (overrides or {}).get("prune", {})})["prune"]
    results = []
    for label, ratio in points:
        method = cfg.methods[0] if label == REFERENCE else label
        manifest = pruned_manifest({**prune_cfg, "method": method, "keep_ratio": ratio})
        if not Path(manifest).is_file():
            raise ValueError(f"{manifest}: the pruned subset of point {label}-{ratio:g} was not written")
        name = REFERENCE if label == REFERENCE else f"{method}-{ratio:g}"
        result = nvila_pipeline(stages=[*SFT, "eval"], keep_ratio=ratio, prune_method=method,
                                output_root=f"{cfg.output_root}/{name}", overrides=per_point, **common)
        print(f"sweep point {name}: {result['eval']}")
        results.append({"method": label, "keep_ratio": ratio, "mlflow_run_id": result["mlflow_run_id"],
                        "eval": result["eval"], "train_dirs": [result[stage] for stage in SFT]})
    return compare_points(results, cfg.experiment, cfg.output_root, cfg.metric)
