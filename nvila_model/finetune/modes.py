"""Fine-tuning modes: which parameters train, LoRA / QLoRA wrapping of the LLM with peft, LR groups, LoRA merge."""

from __future__ import annotations

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
    """Why QLoRA cannot run here (bitsandbytes 4-bit needs a CUDA GPU and the package), or None when it can."""
    if not torch.cuda.is_available():
        return "QLoRA needs bitsandbytes 4-bit kernels on a CUDA GPU; this machine has none (use mode lora or ln_lora)"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "QLoRA needs bitsandbytes (`pip install bitsandbytes`); it is not installed (use mode lora or ln_lora)"
    return None


def quantize_llm_nf4(lm: nn.Module) -> None:
    """QLoRA base: the LLM's decoder Linears as bitsandbytes NF4 (bf16 compute) on the GPU; lm_head stays."""
    import bitsandbytes as bnb

    for name, linear in list(lm.model.layers.named_modules()):
        if not isinstance(linear, nn.Linear):
            continue
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.bfloat16, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(linear.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(lm.model.layers.get_submodule(parent) if parent else lm.model.layers, child, q.cuda())


def apply_mode(model: nn.Module, cfg: FinetuneConfig) -> dict[str, int]:
    """Freeze / wrap `model` in place for `cfg.mode`; returns trainable parameter counts per module."""
    vision, llm = MODES[cfg.mode]
    if llm == "qlora" and (reason := qlora_refusal()):
        raise ValueError(reason)
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
            model.vision_tower.cuda()
            model.projector.cuda()
            quantize_llm_nf4(model.language_model)
            model.language_model = prepare_model_for_kbit_training(model.language_model.cuda())
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
    """Fold the LoRA weights into the LLM's Linears and drop peft's wrappers (no-op without LoRA)."""
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        model.language_model = model.language_model.merge_and_unload()
    return model
