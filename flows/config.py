"""The `pipeline:` key of params.yaml: defaults of the pipeline flow, its deployment and its model registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nvila_model.params import DEFAULT_PARAMS, load_config

ALL = "all"


@dataclasses.dataclass
class PipelineConfig:
    """Flow parameters left at None fall back to the stage's own key in params.yaml (one source of truth)."""

    experiment: str = "nvila"  # MLflow experiment
    stages: list[str] | str = ALL  # "all" or a list of stage names (see tasks.stages.ORDER)
    preset: str | None = None  # model preset for every stage that builds a model
    seed: int | None = None  # seed of every stage that has one
    keep_ratio: float | None = None  # prune.keep_ratio
    prune_method: str | None = None  # prune.method: deltaloss | random
    datasets: list[str] | None = None  # subsets to generate / train on
    registered_model: str = "nvila-{preset}"  # MLflow registered model name ({preset} is filled)
    best_metric: str = "acc_mean"  # eval metric that picks the `best` alias
    deployment: str = "nvila-retrain"  # Prefect deployment name
    cron: str = "0 3 * * 1"  # periodic re-training schedule (Mondays 03:00)
    timezone: str = "UTC"


def load_pipeline_config(params: str | Path = DEFAULT_PARAMS, **overrides: Any) -> PipelineConfig:
    """`params.yaml[pipeline]` with non-None overrides applied."""
    return load_config("pipeline", PipelineConfig, params, overrides)


def flow_parameters(cfg: PipelineConfig, params: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The pipeline flow's parameters for `cfg` (what a deployment or `nvila pipeline run` passes)."""
    return {
        "preset": cfg.preset, "stages": cfg.stages, "datasets": cfg.datasets, "seed": cfg.seed,
        "keep_ratio": cfg.keep_ratio, "prune_method": cfg.prune_method, "experiment": cfg.experiment,
        "params_file": str(params), "registered_model": cfg.registered_model, "best_metric": cfg.best_metric,
    }
