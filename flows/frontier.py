"""The efficient frontier: one pipeline run (a DVC experiment) per variant on the same corpus and seed, compared on
accuracy against training time, optimizer steps and TTFT, with the paper's goals judged."""

# No `from __future__ import annotations`: Prefect builds its parameter model from the live annotations.

import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.config import check_params, load_frontier_config, run_overrides
from flows.pipeline import nvila_pipeline
from flows.variants import REFERENCE, TRAINING, Variant, ordered, run_settings
from tasks.env import project_dir
from tasks.frontier import publish_frontier
from tasks.tracking import MlflowTracker
from tasks.workspace import valid_name


def video_subsets() -> list[str]:
    """The corpus's video subsets (the frames goal compares accuracy on these)."""
    from nvila_model.data.generate import SUBSETS

    return [name for name, subset in SUBSETS.items() if subset.media == "video"]


def video_recipe(variant: Variant, data: dict[str, Any]) -> tuple[int, int]:
    """(frames, frames averaged per group) the variant's final model sees per video."""
    if variant.target.startswith("eval_peer@"):
        return int(data["peer"]["num_video_frames"]), 1
    from nvila_model.presets import build_config

    preset = build_config(data["model"]["preset"])
    stage = data["video_sft"]
    return (int(stage.get("num_video_frames") or preset.num_video_frames),
            int(stage.get("video_pool_size") or preset.video_pool_size))


def check_variants(variants: list[Variant], base: dict[str, Any], shortcuts: dict[str, Any],
                   params: Path) -> dict[str, dict[str, Any]]:
    """Every variant's whole params file with its settings written in, checked before the first run starts (a bad
    setting stops the frontier at once, not hours in). With the reference among them, the peer's steps will be the
    reference's: a stand-in count checks its settings."""
    steps = 1 if any(v.name == REFERENCE for v in variants) else None
    return {v.name: check_params(params, {**run_settings(v, base, steps), **shortcuts}) for v in variants}


@flow(name="efficient-frontier", log_prints=True)
def efficient_frontier(
    variants: list[str] | None = None,
    quick: bool = False,
    preset: str | None = None,
    seed: int | None = None,
    experiment: str | None = None,
    report_dir: str | None = None,
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Unset parameters come from the `frontier:` key of params.yaml.

    Every variant is a pipeline run up to its evaluation with the frontier's settings (`frontier.settings`, then
    `frontier.quick` when `quick`, then `overrides`), then its own (`flows/variants.py`); stages whose settings and
    inputs a previous variant shared are restored from DVC's cache. The reference (`nvila`) runs first and the peer
    trains for as many optimizer steps as it took. Then the report: `frontier.{md,json,png}` in `report_dir`, an
    MLflow run `frontier` beside the variants' runs (experiment `frontier.experiment`, each tagged
    `frontier.variant`), the Prefect artifact `nvila-frontier`. Returns its rows, goals and files.
    """
    started = time.monotonic()
    cfg = load_frontier_config(params_file, variants=variants, experiment=experiment, report_dir=report_dir)
    project = project_dir()
    base = {**cfg.settings, **(cfg.quick if quick else {}), **(overrides or {})}
    shortcuts = run_overrides({"preset": preset, "seed": seed}, None)
    chosen = ordered(list(cfg.variants))
    checked = check_variants(chosen, base, shortcuts, project / params_file)
    mode = "quick" if quick else "full"
    prefix = valid_name(str(flow_run.name or "frontier"))
    points: list[dict[str, Any]] = []
    reference_steps = None
    for variant in chosen:
        settings = run_settings(variant, base, reference_steps)
        run = nvila_pipeline.with_options(flow_run_name=f"{variant.name}-{prefix}")
        result = run(stages=[variant.target], preset=preset, seed=seed, overrides=settings,
                     experiment=cfg.experiment, params_file=params_file, registered_model="")
        MlflowTracker(result["mlflow_run_id"]).set_tags({"frontier.variant": variant.name, "frontier.mode": mode})
        if variant.name == REFERENCE:
            reference_steps = sum(result["train_cost"][s]["train_steps"] for s in TRAINING)
        data = checked[variant.name]
        frames, pool = video_recipe(variant, data)
        points.append({"variant": variant.name, "label": variant.label, "group": variant.group,
                       "metrics": result["metrics"][variant.column], "answers": result["answers"][variant.column],
                       "cost": result["train_cost"],
                       "stage_seconds": result["stage_seconds"], "defects_removed": result["defects_removed"],
                       "uses_scores": data["prune"]["method"] == "deltaloss" and data["prune"]["keep_ratio"] < 1,
                       "video_frames": frames, "video_pool": pool, "experiment": result["experiment"],
                       "mlflow_run_id": result["mlflow_run_id"]})
        print(f"frontier {variant.name}: acc_mean {points[-1]['metrics'].get('acc_mean', float('nan')):.3f}, "
              f"experiment {result['experiment']}")
    out_dir = Path(cfg.report_dir) if Path(cfg.report_dir).is_absolute() else project / cfg.report_dir
    about = {"mode": mode, "variants": [v.name for v in chosen], "preset": checked[chosen[0].name]["model"]["preset"],
             "seed": checked[chosen[0].name]["seed"], "settings": base, "wall_seconds": time.monotonic() - started}
    return publish_frontier(points, video_subsets(), cfg.experiment, str(out_dir), about)
