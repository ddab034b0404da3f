"""The pruning sweep: one pipeline run (a DVC experiment) per keep ratio and method, compared side by side."""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

from typing import Any

from prefect import flow

from flows.config import load_sweep_config
from flows.pipeline import nvila_pipeline
from tasks.sweep import REFERENCE, compare_points

SFT = ("image_sft", "video_sft")  # the stages that train on the pruned subset


def sweep_points(keep_ratios: list[float], methods: list[str]) -> list[tuple[str, float]]:
    """(method, ratio) pairs, highest ratio first; ratio 1.0 keeps everything whatever the method, so it is one
    point, labelled `all-data` (pruned with `methods[0]` at 1.0, which keeps every record)."""
    ratios = sorted({float(r) for r in keep_ratios}, reverse=True)
    points = [(REFERENCE, 1.0)] if 1.0 in ratios else []
    return points + [(method, ratio) for method in methods for ratio in ratios if ratio < 1.0]


@flow(name="pruning-sweep", log_prints=True)
def pruning_sweep(
    keep_ratios: list[float] | None = None,
    methods: list[str] | None = None,
    preset: str | None = None,
    seed: int | None = None,
    epochs: dict[str, float] | None = None,
    experiment: str | None = None,
    report_dir: str = "runs/sweep",
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Unset parameters come from the `sweep:` key of params.yaml.

    Per point: a pipeline run up to `eval` with `prune.keep_ratio` / `prune.method` set and the SFT stages trained
    for `epochs` (not a step budget, so a smaller subset costs less time). Everything upstream of `prune` is the
    same at every point and restored from DVC's cache after the first. Then the comparison (accuracy against SFT
    training time: table and plot) in `report_dir`, an MLflow run `pruning-sweep` and the Prefect artifact
    `nvila-pruning-sweep`. Returns its rows.
    """
    cfg = load_sweep_config(params_file, keep_ratios=keep_ratios, methods=methods, epochs=epochs,
                            experiment=experiment)
    sft = {f"{stage}.{field}": value for stage, epoch in cfg.epochs.items()
           for field, value in (("epochs", float(epoch)), ("max_steps", -1))}
    points = []
    for label, ratio in sweep_points(cfg.keep_ratios, cfg.methods):
        method = cfg.methods[0] if label == REFERENCE else label
        result = nvila_pipeline(stages=["eval"], preset=preset, seed=seed, keep_ratio=ratio, prune_method=method,
                                overrides={**(overrides or {}), **sft}, experiment=cfg.experiment,
                                params_file=params_file, registered_model="")
        cost = {k: sum(result["train_cost"][stage][k] for stage in SFT)
                for k in ("train_seconds", "train_steps", "train_records")}
        print(f"sweep point {label}-{ratio:g}: experiment {result['experiment']}, "
              f"{cfg.metric} {result['metrics']['trained'].get(cfg.metric)}")
        points.append({"method": label, "keep_ratio": ratio, "metrics": result["metrics"]["trained"], "cost": cost,
                       "experiment": result["experiment"], "mlflow_run_id": result["mlflow_run_id"]})
    return compare_points(points, cfg.experiment, report_dir, cfg.metric)
