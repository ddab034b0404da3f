"""Config dataclasses of the fine-tune stage (`params.yaml` key `finetune`) and the mode table."""

from __future__ import annotations

from dataclasses import field

from nvila_model.params import config

# mode -> (vision tower, LLM) treatment; the projector is always fully tuned.
MODES: dict[str, tuple[str, str]] = {
    "full": ("full", "full"),
    "ln": ("ln", "frozen"),
    "lora": ("frozen", "lora"),
    "ln_lora": ("ln", "lora"),
    "qlora": ("frozen", "qlora"),
    "ln_qlora": ("ln", "qlora"),
}


@config
class LoraSettings:
    """peft LoRA on the LLM: REFERENCE.md section 7 values; `all-linear` is every Linear but lm_head."""

    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@config
class FinetuneConfig:
    """The `finetune` stage: which mode, learning rates, how long (checkpoint, data and output are options)."""

    mode: str = "ln_lora"
    lr: float = 2e-4  # LLM (LoRA or full) and projector
    vision_lr_ratio: float = 0.1  # vision tower LR = lr * ratio (REFERENCE: 5-50x below the LLM)
    lora: LoraSettings = field(default_factory=LoraSettings)
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 50
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    precision: str = "auto"  # auto | fp32 | bf16 (train.precision.resolve_precision)
    logging_steps: int = 10
    num_threads: int | None = None  # None: torch's setting (every core, or a pipeline run's share of them)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"finetune.mode {self.mode!r} unknown; choose one of {sorted(MODES)}")
        if not 0 < self.vision_lr_ratio <= 1:
            raise ValueError(f"finetune.vision_lr_ratio must lie in (0, 1], got {self.vision_lr_ratio}")
        if self.lr <= 0 or self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("finetune needs lr > 0, max_steps >= 1, batch_size >= 1 and grad_accum >= 1")
        if self.lora.r < 1 or not 0 <= self.lora.dropout < 1:
            raise ValueError(f"finetune.lora needs r >= 1 and dropout in [0, 1), got {self.lora}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"finetune.precision {self.precision!r} unknown; choose auto, fp32 or bf16")
