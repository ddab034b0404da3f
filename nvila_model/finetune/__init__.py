"""Efficient fine-tuning of a trained NVILA checkpoint: full, vision LayerNorm, LLM LoRA / QLoRA, and their mixes."""

from nvila_model.finetune.config import MODES, FinetuneConfig, LoraSettings

__all__ = ["MODES", "FinetuneConfig", "LoraSettings"]
