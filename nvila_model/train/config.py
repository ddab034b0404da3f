"""Config classes of the model, tokenizer, five training stages and eval keys of params.yaml (settings only)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import Field

from nvila_model.data.config import SAMPLE_CACHE_MB
from nvila_model.params import DeviceSetting, config

MODULES = ("vision_tower", "projector", "language_model")
Module = Literal["vision_tower", "projector", "language_model"]
Precision = Literal["auto", "fp32", "bf16", "fp8"]
Attention = Literal["auto", "sdpa_varlen", "flash_attention_2"]


@config
class ModelParams:
    """`params.yaml:model`: the preset, NVILAConfig overrides, and optional local pretrained components."""

    preset: Literal["tiny", "small", "gpu-check", "nvila-8b", "nvila-lite-8b"] = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    vision_path: str | None = None   # a local SigLIP vision checkpoint directory
    llm_path: str | None = None      # a local Qwen2 checkpoint directory


@config
class StageConfig:
    """One training stage: which modules train at which learning rate, on which data, for how long.

    Its inputs (the previous stage, the tokenizer, the data, the pruned subset) and output are paths given by
    `dvc.yaml` on the command line, not settings.
    """

    train_modules: Annotated[list[Module], Field(min_length=1)]
    lr: dict[Module, float]
    datasets: Annotated[list[str], Field(min_length=1)]
    enabled: bool = True  # false: the stage trains nothing and passes the previous stage's model on unchanged
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=16)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)   # > 0 overrides epochs; -1 trains `epochs`
    max_grad_norm: float = Field(default=1.0, gt=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    num_video_frames: int | None = Field(default=None, ge=1)   # override the model's frames for this stage
    video_pool_size: int | None = Field(default=None, ge=1)
    packing: bool = True
    precision: Precision = "auto"            # auto (bf16 on a GPU with bf16, else fp32) | fp32 | bf16 | fp8
    fp8_emulate: bool | None = None          # fp8 matmuls emulated in bf16; None: exactly when no FP8 GPU
    attn_implementation: Attention = "auto"  # auto: flash-attn varlen on a GPU when installed, else sdpa_varlen
    gradient_checkpointing: bool = False
    deepspeed: str | None = None             # a configs/deepspeed/*.json, used when distributed or on GPU
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int = Field(default=50, ge=1)
    seed: int = Field(default=0, ge=0)
    num_workers: int = Field(default=0, ge=0)
    sample_cache_mb: float = Field(default=SAMPLE_CACHE_MB, ge=0)  # processed samples kept in memory across epochs
    resume: bool = True

    def __post_init__(self) -> None:
        if set(self.lr) != set(self.train_modules):
            raise ValueError(f"lr must give one learning rate per trained module {list(self.train_modules)}, "
                             f"got {sorted(self.lr)}")
        if any(rate <= 0 for rate in self.lr.values()):
            raise ValueError(f"learning rates must be positive, got {dict(self.lr)}")
        if self.max_steps == 0:
            raise ValueError("max_steps 0 trains nothing: use -1 (train `epochs`) or a positive count")
        if self.save_steps % self.logging_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of logging_steps "
                             f"({self.logging_steps}) so a resumed run logs the same windows")


@config
class TokenizerConfig:
    """`params.yaml:tokenizer`: the datasets whose train text the BPE learns from, and its size."""

    datasets: list[str] = field(default_factory=lambda: ["synth-all"])
    vocab_size: int | None = Field(default=None, ge=261)  # >= 256 bytes + 5 specials; default: the preset's vocabulary


METRIC_DECIMALS = 5  # metrics.json keeps every figure to this many decimals


@config
class EvalConfig:
    """`params.yaml:eval`: which test data and how to decode; the model and folders come from the command line."""

    datasets: list[str] = field(default_factory=lambda: ["synth-all"])
    split: str = "test"
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=8, ge=1)
    limit_per_subset: int | None = Field(default=None, ge=1)
    efficiency_samples: int = Field(default=4, ge=0)
    decode_tokens: int = Field(default=16, ge=2)
    device: DeviceSetting = "auto"  # auto (cuda when available) | cpu | cuda[:N]; recorded in the manifest
