"""Config of the peer (params.yaml keys `peers` and `peer`): which peers to train, and their training recipe."""

from __future__ import annotations

from dataclasses import field, replace
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from nvila_model.data.config import SAMPLE_CACHE_MB
from nvila_model.params import TRAIN_STAGES, config

if TYPE_CHECKING:
    from nvila_model.train.config import StageConfig

# `params.yaml:peers`: the peer families dvc.yaml trains and evaluates (stages `peer@NAME`, `eval_peer@NAME`); none by
# default. `llava`: transformers' LlavaForConditionalGeneration (SigLIP + 2-layer MLP + Qwen2), what a user would
# pick instead of NVILA.
PeerFamily = Literal["llava"]
Peers = list[PeerFamily]


@config
class PeerConfig:
    """`params.yaml:peer`: how a peer trains. The LLaVA recipe with transformers' defaults: one phase over the whole
    mixture, every module trained at one learning rate, the stock `Trainer` (AdamW, cosine schedule), padded batches
    (no packing), each image resized to one tile (no Dynamic-S2), no token compression, `num_video_frames` frames
    as separate images (no temporal averaging). Its sizes are the `model` preset's (`vision.` / `text.` overrides
    apply; NVILA's projector and S2 settings do not)."""

    datasets: list[str] = field(default_factory=lambda: ["synth-all"])
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    epochs: float = Field(default=1.0, gt=0)
    # > 0 overrides epochs; null: as many optimizer steps as the five NVILA stages together (`matched_steps`)
    max_steps: int | None = Field(default=-1, ge=-1)
    max_length: int = Field(default=1024, ge=16)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    num_video_frames: int = Field(default=8, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # as the NVILA stages: bf16 autocast where it pays
    logging_steps: int = Field(default=25, ge=1)
    save_steps: int = Field(default=100, ge=1)
    seed: int = Field(default=0, ge=0)
    sample_cache_mb: float = Field(default=SAMPLE_CACHE_MB, ge=0)  # processed samples kept in memory across epochs

    def __post_init__(self) -> None:
        if self.max_steps == 0:
            raise ValueError("max_steps 0 trains nothing: use -1 (train `epochs`) or a positive count")
        if self.save_steps % self.logging_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of logging_steps "
                             f"({self.logging_steps})")


def matched_steps(cfg: PeerConfig, stages: dict[str, StageConfig]) -> PeerConfig:
    """`cfg` with `max_steps: null` resolved to the optimizer steps of the five NVILA stages together (the `max_steps`
    of each enabled one), so the peer gets NVILA's updates without a second copy of their count. A stage trained by
    epochs has no count before it runs: then the peer's steps must be set (the frontier sets them from its reference's
    run)."""
    if cfg.max_steps is not None:
        return cfg
    missing = [name for name in TRAIN_STAGES if name not in stages]
    if missing:
        raise ValueError(f"peer.max_steps: null takes the NVILA stages' max_steps together; no {', '.join(missing)}")
    enabled = {name: stages[name] for name in TRAIN_STAGES if stages[name].enabled}
    by_epochs = [name for name, stage in enabled.items() if stage.max_steps < 0]
    if by_epochs:
        raise ValueError(f"peer.max_steps: null takes the NVILA stages' max_steps together, but {', '.join(by_epochs)} "
                         "train by epochs (max_steps -1): set peer.max_steps")
    return replace(cfg, max_steps=sum(stage.max_steps for stage in enabled.values()))
