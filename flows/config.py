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


@dataclasses.dataclass
class SweepConfig:
    """The `sweep:` key: the pruning sweep's points and how the SFT stages train at each one.

    The pre-training stages do not read pruned data, so every point shares them; the SFT stages train for a fixed
    number of epochs (`max_steps` off), so a smaller subset trains in proportionally less time, which is what the
    sweep compares. Keep ratio 1.0 is the all-data reference (run once: both methods keep everything).
    """

    keep_ratios: list[float] = dataclasses.field(default_factory=lambda: [1.0, 0.9, 0.7, 0.5])
    methods: list[str] = dataclasses.field(default_factory=lambda: ["deltaloss", "random"])
    epochs: dict[str, float] = dataclasses.field(default_factory=lambda: {"image_sft": 5.0, "video_sft": 3.0})
    experiment: str = "nvila-sweep"  # MLflow experiment of the point runs and the comparison run
    output_root: str = "runs/sweep"  # each point's SFT models and eval under <output_root>/<method>-<ratio>/
    metric: str = "acc_mean"  # eval metric plotted against training time

    def validate(self) -> None:
        """Raise `ValueError` on an empty sweep, a ratio outside (0, 1], an unknown method or a non-SFT stage."""
        from nvila_model.deltaloss.config import PRUNE_METHODS
        from tasks.routing import RELOCATED

        if not self.keep_ratios or not self.methods:
            raise ValueError("sweep: keep_ratios and methods must not be empty")
        bad = [r for r in self.keep_ratios if not 0 < float(r) <= 1]
        if bad:
            raise ValueError(f"sweep.keep_ratios: {bad} not in (0, 1]")
        unknown = sorted(set(self.methods) - set(PRUNE_METHODS))
        if unknown:
            raise ValueError(f"sweep.methods: unknown {unknown}; choose from {list(PRUNE_METHODS)}")
        shared = sorted(set(self.epochs) - set(RELOCATED))
        if shared:
            raise ValueError(f"sweep.epochs: {shared} are shared by every point (not trained per point); "
                             f"set epochs for {[s for s in RELOCATED if s.endswith('_sft')]}")
        if any(float(e) <= 0 for e in self.epochs.values()):
            raise ValueError(f"sweep.epochs: {self.epochs} must be positive")


def load_sweep_config(params: str | Path = DEFAULT_PARAMS, **overrides: Any) -> SweepConfig:
    """`params.yaml[sweep]` with non-None overrides applied, validated."""
    cfg = load_config("sweep", SweepConfig, params, {k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["image_sft.epochs=5", "image_sft.max_steps=-1"]` -> `{"image_sft": {"epochs": 5, "max_steps": -1}}`.

    Values are YAML (`5`, `0.5`, `true`, `[a, b]`, `{r: 8}`), as in params.yaml; a field holding a mapping is
    replaced whole.
    """
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        key, dot, field = target.strip().partition(".")
        if not sep or not dot or not key or not field or "." in field:
            raise ValueError(f"--set {item!r}: expected KEY.FIELD=VALUE, e.g. image_sft.epochs=5")
        out.setdefault(key, {})[field] = yaml.safe_load(value)
    return out
