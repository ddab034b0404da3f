"""The orchestration keys of params.yaml (`pipeline`, `sweep`, `frontier`), run parameters as params overrides, and
the check of a whole params file before a run starts."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from nvila_model.deltaloss.config import PruneMethod
from nvila_model.params import DEFAULT_PARAMS, assign, config, load_params, parse, read_params

ALL = "all"
# Flow parameters that are shortcuts for a params.yaml setting (what `dvc exp run -S` would set).
SHORTCUTS = {"preset": "model.preset", "seed": "seed", "keep_ratio": "prune.keep_ratio",
             "prune_method": "prune.method"}


@config
class PipelineConfig:
    """`params.yaml:pipeline`: defaults of the pipeline flow, its deployment and its model registry."""

    experiment: str = "nvila"  # MLflow experiment
    stages: list[str] | Literal["all"] = ALL  # "all", or the stages to run (with what they need, in dvc.yaml order)
    registered_model: str = "nvila-{preset}"  # MLflow registered model name ({preset} is filled); "" skips it
    best_metric: str = "acc_mean"  # eval metric that picks the `best` alias
    deployment: str = "nvila-retrain"  # Prefect deployment name
    cron: str = "0 3 * * 1"  # periodic re-training schedule (Mondays 03:00)
    timezone: str = "UTC"
    # stages that do not depend on each other run at once, this many at most, splitting the CPU cores between them
    parallel_stages: int = Field(default=2, ge=1)


@config
class SweepConfig:
    """`params.yaml:sweep`: the pruning sweep's points and how the SFT stages train at each one.

    Each point is one pipeline run (a DVC experiment); everything upstream of `prune` is restored from the cache.
    The SFT stages train for a fixed number of epochs (`max_steps` off), so a smaller subset trains in
    proportionally less time, which is what the sweep compares. Keep ratio 1.0 is the all-data reference.
    """

    keep_ratios: list[float] = Field(default_factory=lambda: [1.0, 0.9, 0.7, 0.5], min_length=1)
    methods: list[PruneMethod] = Field(default_factory=lambda: ["deltaloss", "random"], min_length=1)
    epochs: dict[Literal["image_sft", "video_sft"], float] = field(
        default_factory=lambda: {"image_sft": 5.0, "video_sft": 3.0})
    experiment: str = "nvila-sweep"  # MLflow experiment of the point runs and the comparison run
    metric: str = "acc_mean"  # eval metric plotted against training time

    def __post_init__(self) -> None:
        bad = [r for r in self.keep_ratios if not 0 < float(r) <= 1]
        if bad:
            raise ValueError(f"keep_ratios {bad} not in (0, 1]")
        if any(float(e) <= 0 for e in self.epochs.values()):
            raise ValueError(f"epochs {dict(self.epochs)} must be positive")


def _all_variants() -> list[str]:
    from flows.variants import VARIANTS

    return list(VARIANTS)


@config
class FrontierConfig:
    """`params.yaml:frontier`: the efficient frontier's variants and the corpus and recipe they all train with.

    `settings` (dotted params settings, as `--set`) apply to every variant's pipeline run: they ask the generator
    for a corpus that can show each effect and set the training recipe; `quick` applies on top with `--quick` (a
    smaller corpus, fewer steps). Each variant then adds its own settings (`flows/variants.py`).
    """

    variants: list[str] = Field(default_factory=_all_variants, min_length=1)
    experiment: str = "nvila-frontier"  # MLflow experiment of the variants' runs and the summary run
    report_dir: str = "bench/results"  # frontier.{md,json,png} go here
    settings: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from flows.variants import ordered

        ordered(list(self.variants))  # unknown variants are refused when the file is read
        for name, values in (("settings", self.settings), ("quick", self.quick)):
            bad = [k for k in values if not k or any(not part for part in k.split("."))]
            if bad:
                raise ValueError(f"{name}: {bad} are not dotted params keys (e.g. generate.scale)")


ORCHESTRATION = {"pipeline": PipelineConfig, "sweep": SweepConfig, "frontier": FrontierConfig}


def load_pipeline_config(params: str | Path = DEFAULT_PARAMS) -> PipelineConfig:
    data = read_params(params)
    return parse(PipelineConfig, data.get("pipeline"), f"{params}: pipeline")


def load_sweep_config(params: str | Path = DEFAULT_PARAMS, **overrides: Any) -> SweepConfig:
    """`params.yaml:sweep` with the non-None `overrides` applied, validated."""
    data = read_params(params)
    values = {**(data.get("sweep") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    return parse(SweepConfig, values, f"{params}: sweep")


def load_frontier_config(params: str | Path = DEFAULT_PARAMS, **overrides: Any) -> FrontierConfig:
    """`params.yaml:frontier` with the non-None `overrides` applied, validated."""
    data = read_params(params)
    values = {**(data.get("frontier") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    return parse(FrontierConfig, values, f"{params}: frontier")


def with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of params `data` with `{"prune.keep_ratio": 0.5, ...}` written in."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        assign(out, dotted, value)
    return out


def check_params(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every key of the params file with `overrides` applied, checked (library and orchestration keys): all problems
    at once, one line each, as a `ValueError`. Returns the resulting params."""
    data = with_overrides(read_params(path), overrides or {})
    problems = []
    try:
        configs = load_params(path, data=data)
    except ValueError as exc:
        problems += str(exc).splitlines()
    else:
        if "model" in configs:  # the overrides are NVILAConfig fields: a misspelt one would fail the tokenizer stage
            from nvila_model.presets import build_config

            try:
                build_config(configs["model"].preset, **configs["model"].overrides)
            except ValueError as exc:
                problems.append(f"{path}: model.overrides: {exc}")
        if configs.get("peers") and "peer" in configs:  # a peer's steps may come from the stages' (across keys)
            from nvila_model.peer.config import matched_steps

            try:
                matched_steps(configs["peer"], configs)
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
    for key, cls in ORCHESTRATION.items():
        try:
            parse(cls, data.get(key), f"{path}: {key}")
        except ValueError as exc:
            problems += str(exc).splitlines()
    if problems:
        raise ValueError("\n".join(problems))
    return data


def run_overrides(values: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The params settings of a run: its shortcut parameters (preset, seed, keep ratio, prune method) and its
    `overrides` (dotted keys, as `dvc exp run -S`), the shortcuts winning."""
    out = dict(overrides or {})
    out.update({SHORTCUTS[name]: value for name, value in values.items() if value is not None})
    return out


def parse_overrides(items: Iterable[str], option: str = "--set", example: str = "image_sft.epochs=5") -> dict[str, Any]:
    """`["image_sft.epochs=5", "score.ray.num_actors=0"]` -> `{"image_sft.epochs": 5, "score.ray.num_actors": 0}`.

    Values are YAML (`5`, `0.5`, `true`, `[a, b]`, `{r: 8}`), as in params.yaml; a field holding a mapping is
    replaced whole. A malformed item is a ValueError naming `option` and the item.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        target, sep, value = item.partition("=")
        target = target.strip()
        if not sep or not target or any(not part for part in target.split(".")):
            raise ValueError(f"{option} {item!r}: expected KEY[.FIELD...]=VALUE, e.g. {example}")
        try:
            out[target] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"{option} {item!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    return out
