"""Fine-tuning modes: which parameters train, LoRA / QLoRA wrapping of the LLM with peft, LR groups, LoRA merge."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nvila_model.finetune.config import MODES, FinetuneConfig, LoraSettings

MODULES = ("vision_tower", "projector", "language_model")


def vision_layernorm_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every LayerNorm weight and bias of the vision tower (what LN tuning trains)."""
    return {f"vision_tower.{name}.{p_name}": p for name, mod in model.vision_tower.named_modules()
            if isinstance(mod, nn.LayerNorm) for p_name, p in mod.named_parameters(recurse=False)}


def lora_config(settings: LoraSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, bias="none", task_type="CAUSAL_LM")


def qlora_refusal() -> str | None:
    """Why QLoRA cannot run here (bitsandbytes missing), or None when it can: bitsandbytes >= 0.45 runs its 4-bit
    layers on CUDA and on x86 CPUs alike."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "finetune.mode qlora needs bitsandbytes: pip install 'nvila-pipeline[qlora]' (or use mode lora)"
    return None


def nf4_config() -> Any:
    """QLoRA's base quantization (Dettmers et al. 2023): NF4 weights, double-quantized scales, bf16 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"])


def load_llm_4bit(checkpoint: str | Path, text_config: Any, device: torch.device) -> nn.Module:
    """The LLM of an NVILA checkpoint directory loaded by transformers in 4 bit (`BitsAndBytesConfig`): its decoder
    Linears become bitsandbytes `Linear4bit` (lm_head stays), and the model is marked `is_loaded_in_4bit`, which is
    what peft reads to wrap those layers with its 4-bit LoRA class. The vision tower and projector weights in the
    same file are not this model's and are skipped."""
    from transformers import Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the skipped vision/projector keys would be listed as unexpected
    try:
        lm, info = Qwen2ForCausalLM.from_pretrained(
            str(checkpoint), config=text_config, quantization_config=nf4_config(), device_map={"": str(device)},
            key_mapping={r"^language_model\.": ""}, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise ValueError(f"{checkpoint}: the LLM weights are incomplete, missing {sorted(info['missing_keys'])[:5]}")
    return lm


def apply_mode(model: nn.Module, cfg: FinetuneConfig) -> dict[str, int]:
    """Freeze / wrap `model` in place for `cfg.mode`; returns trainable parameter counts per module."""
    vision, llm = MODES[cfg.mode]
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if vision == "full":
        model.vision_tower.requires_grad_(True)
    elif vision == "ln":
        for param in vision_layernorm_params(model).values():
            param.requires_grad_(True)
    if llm == "full":
        model.language_model.requires_grad_(True)
    elif llm in ("lora", "qlora"):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if llm == "qlora":
            if not getattr(model.language_model, "is_loaded_in_4bit", False):
                raise ValueError("finetune.mode qlora needs the LLM loaded in 4 bit (finetune.modes.load_llm_4bit)")
            model.language_model = prepare_model_for_kbit_training(model.language_model,
                                                                   use_gradient_checkpointing=False)
        model.language_model = get_peft_model(model.language_model, lora_config(cfg.lora))
    return trainable_counts(model)


def trainable_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per top-level module, plus the total."""
    counts = {name: sum(p.numel() for p in model.get_submodule(name).parameters() if p.requires_grad)
              for name in MODULES}
    counts["total"] = sum(counts.values())
    return counts


def module_lrs(model: nn.Module, cfg: FinetuneConfig) -> dict[str, float]:
    """LR per top-level module that has trainable parameters: vision tower at `lr * vision_lr_ratio`."""
    rates = {"vision_tower": cfg.lr * cfg.vision_lr_ratio, "projector": cfg.lr, "language_model": cfg.lr}
    counts = trainable_counts(model)
    return {name: rate for name, rate in rates.items() if counts[name]}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA weights into the LLM's full-precision Linears and drop peft's wrappers (no-op without LoRA).
    A 4-bit LLM is refused: its packed NF4 bytes are no place for a delta (see `merge_into_base`)."""
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        if getattr(model.language_model.get_base_model(), "is_loaded_in_4bit", False):
            raise ValueError("a QLoRA adapter merges into a full-precision copy of the base (merge_into_base)")
        model.language_model = model.language_model.merge_and_unload()
    return model


def merge_into_base(trained: nn.Module, base: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """QLoRA export: `base` (the full-precision model the 4-bit LLM was loaded from) with the trained model's
    vision tower and projector weights and the saved LoRA adapter merged into its LLM."""
    from peft import PeftModel

    rest = {k: v for k, v in trained.state_dict().items() if not k.startswith("language_model.")}
    missing, unexpected = base.load_state_dict(rest, strict=False)
    if unexpected or any(not k.startswith("language_model.") for k in missing):
        raise ValueError(f"the trained model does not match its base: unexpected {unexpected[:5]}, "
                         f"missing {[k for k in missing if not k.startswith('language_model.')][:5]}")
    base.language_model = PeftModel.from_pretrained(base.language_model, str(adapter_dir)).merge_and_unload()
    return base
