"""The variants of the efficient frontier: each one pipeline run, defined by params settings on top of the frontier's.

Every variant goes through existing settings (`model.overrides`, stage settings, `peers`), so each is an ordinary
DVC experiment that `dvc exp show` lists and `dvc exp apply` reproduces; runs share through DVC's cache whatever
their settings leave unchanged (the corpus, the tokenizer, the scores, and e.g. everything before the SFT stages for
the pruning variants). `nvila` is the reference: Dynamic-S2 + 2x2 STC, with the frontier's video recipe (many
frames, temporally averaged) and all data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRAINING = ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")
REFERENCE = "nvila"


@dataclass(frozen=True)
class Variant:
    """One point of the frontier: the settings of its pipeline run, the stage it runs up to, the metrics column
    of that run's result, and the group it is drawn with."""

    name: str
    label: str
    settings: dict[str, Any] = field(default_factory=dict)
    target: str = "eval"
    column: str = "trained"
    group: str = "model"


def _model(projector: str, dynamic_s2: bool) -> dict[str, Any]:
    return {"model.overrides": {"projector": projector, "dynamic_s2": dynamic_s2}}


NVILA = _model("mlp_downsample", True)
# Without 2x2 STC a Dynamic-S2 image keeps 4x the visual tokens: the token limits of validation and training (1024 in
# params.yaml) grow by the same factor, or validation quarantines the many-tile records (chart: 27% in --quick).
UNCOMPRESSED_S2_TOKENS = 4 * 1024
UNCOMPRESSED_S2 = {**_model("none", True), "validate.max_tokens": UNCOMPRESSED_S2_TOKENS,
                   **{f"{stage}.max_length": UNCOMPRESSED_S2_TOKENS for stage in TRAINING}}
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("nvila", "NVILA: Dynamic-S2 + 2x2 STC, dense frames averaged, all data", NVILA),
    Variant("peer", "peer: transformers LLaVA + stock Trainer, fixed resize, no compression, padding, sparse frames",
            {"peers": ["llava"]}, target="eval_peer@llava", column="peer-llava", group="peer"),
    Variant("fixed_uncompressed", "fixed resize, no compression (VILA-1.5-like)", _model("none", False)),
    Variant("s2_uncompressed", "Dynamic-S2, no compression", UNCOMPRESSED_S2),
    Variant("nvila_lite", "NVILA-Lite: Dynamic-S2 + 3x3 STC", _model("mlp_downsample_3x3_fix", True)),
    Variant("nvila_lite_no_vep", "NVILA-Lite without vision-encoder pre-training",
            {**_model("mlp_downsample_3x3_fix", True), "vision_pretrain.enabled": False}),
    Variant("sparse_frames", "NVILA with sparse frames, unpooled (same video tokens)",
            {**NVILA, "video_sft.num_video_frames": 8, "video_sft.video_pool_size": 1}, group="video"),
    Variant("deltaloss_0.5", "NVILA on the DeltaLoss top half of each subset",
            {**NVILA, "prune.keep_ratio": 0.5, "prune.method": "deltaloss"}, group="data"),
    Variant("deltaloss_0.5_balanced", "NVILA on the DeltaLoss top half of each answer within each subset",
            {**NVILA, "prune.keep_ratio": 0.5, "prune.method": "deltaloss", "prune.balance_answers": True},
            group="data"),
    Variant("random_0.5", "NVILA on a random half of each subset",
            {**NVILA, "prune.keep_ratio": 0.5, "prune.method": "random"}, group="data"),
)}


def ordered(names: list[str]) -> list[Variant]:
    """The variants to run, the reference first (the peer's step budget is matched to it), then in table order."""
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"frontier variants {unknown} unknown; choose from {list(VARIANTS)}")
    return [v for v in VARIANTS.values() if v.name in names]


def run_settings(variant: Variant, base: dict[str, Any], reference_steps: int | None) -> dict[str, Any]:
    """The params settings of the variant's run: the frontier's (`base`), then the variant's own; `model.overrides`
    merge (the frontier's, e.g. Dynamic-S2 scales, under the variant's projector and S2 switch). The peer trains for
    as many optimizer steps as the reference's five stages took together (`reference_steps`, when it ran), with the
    same batch size: equal updates and samples, so accuracy is compared at what each costs in time."""
    settings = {**base, **variant.settings}
    if "model.overrides" in base and "model.overrides" in variant.settings:
        settings["model.overrides"] = {**base["model.overrides"], **variant.settings["model.overrides"]}
    if variant.name == "peer" and reference_steps:
        settings["peer.max_steps"] = int(reference_steps)
    return settings
