"""Precision paths: fp32, bf16 autocast where the hardware has it, and FP8 for the LLM's linear layers.

FP8 is a converter applied after the model is built (model code stays precision-agnostic): torchao's float8 training
swaps the LLM's q/k/v/o/gate/up/down Linears for Float8Linear (E4M3 forward, E5M2 gradients, per-tensor scales);
the vision tower, projector and lm_head stay in bf16. `torch._scaled_mm` (cuBLAS) needs the inner dimension and
both dimensions of the second operand to be multiples of 16. The feature sizes are checked here; the third matmul
(weight gradient = grad_output^T @ input) has the micro-batch's token count as its inner dimension, which packing
makes arbitrary, so torchao's `pad_inner_dim` zero-pads it (zeros add nothing to the product). On CPU torchao's
emulation runs by default; `fp8_emulate: false` runs the real `torch._scaled_mm` CPU kernel, which does not enforce
the rule itself (tests check it).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
FP8_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def bf16_supported() -> bool:
    """Whether bf16 runs here at all (an explicit `precision: bf16` is refused where it does not)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def bf16_pays() -> bool:
    """Whether `precision: auto` takes bf16 autocast: a GPU with bf16 only. On the CPUs we train on, autocast's
    casts eat what the bf16 matmuls gain at these model sizes (`bench/mfu.py --bf16`, 2 threads, step time against
    fp32): AMD EPYC with AVX512-BF16 0.92x on the tiny preset and 1.08x on the small one; Intel Xeon with AMX tiles
    0.63x and 0.98x. There `auto` is fp32; an explicit `bf16` still runs."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def fp8_hardware() -> str:
    """'gpu' for an FP8-capable GPU (sm_89+), 'cpu-emulated' without a GPU; refuses a GPU without FP8."""
    if not torch.cuda.is_available():
        return "cpu-emulated"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise ValueError(f"precision fp8 needs an FP8 GPU (Ada sm_89, Hopper sm_90 or Blackwell); "
                         f"{torch.cuda.get_device_name()} is sm_{major}{minor}. Use precision bf16.")
    return "gpu"


def resolve_precision(requested: str, fp8_emulate: bool | None = None) -> str:
    """The path a run takes: 'fp32', 'bf16', or for fp8 'fp8-gpu', 'fp8-cpu-emulated', 'fp8-cpu-scaled-mm' (the
    real float8 matmul on the CPU kernel) or 'fp8-gpu-emulated' (never a silent fallback). `fp8_emulate` None:
    emulate exactly when there is no FP8 GPU."""
    if requested == "auto":
        return "bf16" if bf16_pays() else "fp32"
    if requested == "bf16" and not bf16_supported():
        raise ValueError("precision bf16 requested but this hardware has no bf16 support; use fp32")
    if requested == "fp8":
        hardware = fp8_hardware()
        emulate = hardware == "cpu-emulated" if fp8_emulate is None else fp8_emulate
        if hardware == "gpu":
            return "fp8-gpu-emulated" if emulate else "fp8-gpu"
        return "fp8-cpu-emulated" if emulate else "fp8-cpu-scaled-mm"
    return requested


def resolve_attention(requested: str) -> str:
    """'flash_attention_2' on a GPU with flash-attn installed, else 'sdpa_varlen' (nvila_model/attention.py): both
    attend within each sample of a packed row from its boundaries. Asking for flash-attn without it is an error."""
    import importlib.util

    available = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if available else "sdpa_varlen"
    if requested == "flash_attention_2" and not available:
        raise ValueError("attn_implementation flash_attention_2 needs a CUDA GPU and the `gpu` extra "
                         "(pip install 'nvila-pipeline[gpu]'); use sdpa_varlen")
    return requested


def is_fp8_target(module: nn.Module, fqn: str) -> bool:
    """Only the LLM decoder's projection Linears (not lm_head, vision tower or projector)."""
    return (isinstance(module, nn.Linear) and fqn.startswith("language_model.")
            and fqn.rsplit(".", 1)[-1] in FP8_LAYERS)


def convert_fp8(model: nn.Module, path: str) -> list[str]:
    """Swap the targeted Linears for torchao Float8Linear in place; returns the converted module names."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    targets = [name for name, mod in model.named_modules() if is_fp8_target(mod, name)]
    for name in targets:
        linear = model.get_submodule(name)
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(f"FP8 needs Linear sizes divisible by 16; {name} is "
                             f"{linear.in_features}x{linear.out_features}")
    config = Float8LinearConfig(emulate=path.endswith("emulated"), pad_inner_dim=True)
    convert_to_float8_training(model, module_filter_fn=is_fp8_target, config=config)
    log.info("FP8 (%s): converted %d LLM linear layers", path, len(targets))
    return targets
