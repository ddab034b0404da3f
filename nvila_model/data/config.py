"""Config classes of the data stages and the dataset registry (params.yaml keys `generate`, `validate`, `datasets`).

Settings only, no heavy imports: the whole params file is checked against these before any work starts.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from pydantic import Field

from ..params import config, parse
from .answers import normalise
from .scenes import WORDS

SAMPLE_CACHE_MB = 1024  # default memory for processed training samples (the training configs' `sample_cache_mb`)


@config
class SubsetConfig:
    """Per-subset knobs. Defects (`noise`: wrong answers, `duplicate`: near-duplicates) go into train only.

    Scene knobs (defaults reproduce the standard corpus): `glyph_px` is the range of text heights in pixels and
    `words` the vocabulary written and asked for (text subset; lowercase letters, at least two); videos have
    `frames` frames cut into time slots of `slot_frames`, and an event (a flash, an appearance) starts in its slot at
    a random offset and lasts `event_frames` frames (None: the whole slot). An event shorter than the stride of a
    sparse frame sampling is missed by most sparse samplings and caught by dense ones.
    """

    enabled: bool = True
    train: int = 300
    val: int = 30
    test: int = 40
    min_side: int = 48
    max_side: int = 96
    aspect_ratios: list[float] = field(default_factory=lambda: [1.0])
    noise: float = 0.1
    duplicate: float = 0.1
    multi_turn: float = 0.0
    frames: int = 16
    glyph_px: list[int] = field(default_factory=lambda: [8, 11])  # [min, max] text height, inclusive
    words: list[str] = field(default_factory=lambda: list(WORDS))  # the text subset's answer set
    slot_frames: int = 2
    event_frames: int | None = None


_VIDEO = {"train": 150, "val": 20, "test": 30, "min_side": 48, "max_side": 64, "aspect_ratios": [1.0, 1.33]}
DEFAULT_SUBSETS: dict[str, dict[str, Any]] = {
    "attributes": {"min_side": 48, "max_side": 96, "aspect_ratios": [1.0, 1.5, 0.67], "multi_turn": 0.3},
    "counting": {"min_side": 64, "max_side": 112, "aspect_ratios": [1.0, 1.33, 0.75]},
    "spatial": {"min_side": 64, "max_side": 112, "aspect_ratios": [1.0, 1.5, 2.0]},
    "text": {"min_side": 72, "max_side": 112, "aspect_ratios": [2.0, 3.0]},
    "chart": {"min_side": 64, "max_side": 128, "aspect_ratios": [1.0, 1.33, 1.5], "multi_turn": 0.3},
    "compare": {"min_side": 40, "max_side": 64, "multi_turn": 0.3},
    "motion": dict(_VIDEO),
    "order": dict(_VIDEO),
    "flashes": dict(_VIDEO),
}


@config
class GenerateConfig:
    """params.yaml `generate`: seed, size multiplier, overrides of `SubsetConfig` for every subset (`all_subsets`,
    e.g. `{noise: 0.2, duplicate: 0.3}`), then per subset (`subsets`)."""

    seed: int = Field(default=0, ge=0)
    scale: float = Field(default=1.0, gt=0)
    all_subsets: dict[str, Any] = field(default_factory=dict)
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        subset_configs(self)  # unknown subsets or knobs, bad shares: refused when the file is read


def subset_configs(cfg: GenerateConfig) -> dict[str, SubsetConfig]:
    """Defaults, then `all_subsets`, then each subset's own overrides; unknown subsets or knobs raise `ValueError`."""
    unknown = sorted(set(cfg.subsets) - set(DEFAULT_SUBSETS))
    if unknown:
        raise ValueError(f"subsets: unknown subset(s) {unknown}; known: {sorted(DEFAULT_SUBSETS)}")
    out = {}
    for name, defaults in DEFAULT_SUBSETS.items():
        sc = parse(SubsetConfig, {**defaults, **cfg.all_subsets, **(cfg.subsets.get(name) or {})},
                   where=f"subsets.{name}")
        if not (0 <= sc.noise < 1 and 0 <= sc.duplicate < 1 and sc.noise + sc.duplicate < 1):
            raise ValueError(f"subsets.{name}: noise and duplicate must be shares in [0, 1) summing below 1")
        if sc.min_side < 16 or sc.max_side < sc.min_side or not sc.aspect_ratios:
            raise ValueError(f"subsets.{name}: need 16 <= min_side <= max_side and some aspect_ratios")
        if len(sc.glyph_px) != 2 or not 4 <= sc.glyph_px[0] <= sc.glyph_px[1]:
            raise ValueError(f"subsets.{name}: glyph_px must be [min, max] pixels with 4 <= min <= max")
        if len(sc.words) < 2 or not all(w.isascii() and w.isalpha() and w.islower() for w in sc.words) or len(
                {normalise(w) for w in sc.words} - {""}) != len(sc.words):
            raise ValueError(f"subsets.{name}: words must be at least two lowercase words of letters a-z that stay "
                             f"distinct and non-empty under evaluation's normalising (no article), got {sc.words}")
        if sc.slot_frames < 1 or sc.frames % sc.slot_frames:
            raise ValueError(f"subsets.{name}: frames ({sc.frames}) must be a multiple of slot_frames "
                             f"({sc.slot_frames} >= 1)")
        if sc.event_frames is not None and not 1 <= sc.event_frames <= sc.slot_frames:
            raise ValueError(f"subsets.{name}: event_frames must be in [1, slot_frames={sc.slot_frames}]")
        out[name] = sc
    return out


@config
class ValidateConfig:
    """params.yaml `validate`: limits and the reject-share gate (the raw and validated folders are options)."""

    name: str = "synth"  # the expectation suite's name
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    min_image_side: int = Field(default=8, ge=1)
    max_image_side: int = Field(default=4096, ge=1)
    max_image_pixels: int = Field(default=16_000_000, ge=1)
    min_video_frames: int = Field(default=8, ge=1)
    max_text_chars: int = Field(default=8000, ge=1)
    max_tokens: int = Field(default=1024, ge=1)
    max_reject_share: float = Field(default=0.05, ge=0, le=1)
    data_docs: bool = True


@config
class DatasetEntry:
    """One dataset: `manifest` may hold `{split}` (None: the pipeline's validated corpus, `<data>/{split}.jsonl`);
    `media_root` defaults to the manifest's; `subsets` filters; `repeat` scales the train split."""

    manifest: str | None = None
    media_root: str = ""
    subsets: list[str] = field(default_factory=list)
    repeat: float = Field(default=1.0, ge=0)


@config
class DatasetsConfig:
    """params.yaml `datasets`: `entries` (name -> DatasetEntry), `mixtures` (name -> {entry: repeat})."""

    entries: dict[str, DatasetEntry] = field(default_factory=dict)
    mixtures: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, parts in self.mixtures.items():
            missing = sorted(set(parts) - set(self.entries))
            if missing:
                raise ValueError(f"mixtures.{name}: unknown dataset(s) {missing}; known: {sorted(self.entries)}")
            if name in self.entries:
                raise ValueError(f"{name!r} is both a dataset and a mixture")
