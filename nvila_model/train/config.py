"""Config dataclasses of the model key and of the five training stages (one `params.yaml` key each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODULES = ("vision_tower", "projector", "language_model")
STAGES = ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")
PRECISIONS = ("auto", "fp32", "bf16", "fp8")


@dataclass
class ModelParams:
    """`params.yaml:model`: the preset, NVILAConfig overrides, and optional local pretrained components."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    vision_path: str | None = None   # a local SigLIP vision checkpoint directory
    llm_path: str | None = None      # a local Qwen2 checkpoint directory


@dataclass
class StageConfig:
    """One training stage: which modules train at which learning rate, on which data, for how long."""

    out_dir: str
    train_modules: list[str]
    lr: dict[str, float]
    datasets: list[str]
    pruned_manifest: str | None = None      # keep only the train ids listed here (a DeltaLoss/random pruning)
    init_from: str | None = None            # previous stage's directory; None builds from the model preset
    tokenizer_dir: str = "runs/tokenizer"
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 1024
    epochs: float = 1.0
    max_steps: int = -1                      # > 0 overrides epochs
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    num_video_frames: int | None = None      # override the model's frames for this stage
    video_pool_size: int | None = None
    packing: bool = True
    pack_tokens: int | None = None           # token budget of one packed row (SDPA/eager); default max_length
    precision: str = "auto"                  # auto (bf16 where supported) | fp32 | bf16 | fp8
    fp8_emulate: bool | None = None          # fp8 matmuls emulated in bf16; None: exactly when no FP8 GPU
    attn_implementation: str = "auto"        # auto (flash-attn varlen on GPU when installed, else sdpa) | sdpa | eager
    gradient_checkpointing: bool = False
    deepspeed: str | None = None             # a configs/deepspeed/*.json, used when distributed or on GPU
    logging_steps: int = 10
    save_steps: int = 50
    seed: int = 0
    num_workers: int = 0
    resume: bool = True

    def validate(self, stage: str) -> None:
        unknown = sorted(set(self.train_modules) - set(MODULES))
        if unknown:
            raise ValueError(f"{stage}: train_modules {unknown} unknown; choose from {list(MODULES)}")
        if set(self.lr) != set(self.train_modules):
            raise ValueError(f"{stage}: lr must give one learning rate per trained module {self.train_modules}, "
                             f"got {sorted(self.lr)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{stage}: precision {self.precision!r} unknown; choose from {list(PRECISIONS)}")
        if not self.datasets:
            raise ValueError(f"{stage}: no datasets given")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"{stage}: batch_size and grad_accum must be >= 1")
