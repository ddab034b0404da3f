"""SmoothQuant for the SigLIP vision tower: per-channel scales folded into LayerNorm -> QKV and LayerNorm -> fc1.

Hand-written on purpose: the maths is a few lines (s_j = max|X_j|^alpha / max|W_j|^(1-alpha)), and no maintained
library applies it to SigLIP on CPU (SmoothQuant's reference code targets OPT/Llama blocks on CUDA, llm-compressor
needs transformers <= 5.17 here). Division of LayerNorm's affine by `s` and multiplication of the following Linears'
input columns by `s` is an exact re-parameterisation in real arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer


@dataclass
class SmoothGroup:
    """One LayerNorm and the Linears that read its output."""

    name: str  # the LayerNorm's qualified name inside the searched module
    norm: nn.LayerNorm
    linears: list[nn.Linear]


def smooth_groups(module: nn.Module) -> list[SmoothGroup]:
    """LayerNorm -> (q, k, v) and LayerNorm -> fc1 of every SigLIP encoder layer under `module`."""
    groups = []
    for name, layer in module.named_modules():
        if isinstance(layer, SiglipEncoderLayer):
            attn = layer.self_attn
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            groups.append(SmoothGroup(f"{name}.layer_norm1", layer.layer_norm1, qkv))
            groups.append(SmoothGroup(f"{name}.layer_norm2", layer.layer_norm2, [layer.mlp.fc1]))
    if not groups:
        raise ValueError(f"{type(module).__name__} holds no SigLIP encoder layer to smooth")
    return groups


@torch.no_grad()
def collect_act_absmax(module: nn.Module, run_calibration: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Per-channel max |activation| at each smoothing LayerNorm's output while `run_calibration()` runs."""
    stats: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str) -> Callable:
        def record(_mod: nn.Module, _inp: tuple, out_BLC: torch.Tensor) -> None:
            amax_C = out_BLC.detach().abs().float().reshape(-1, out_BLC.shape[-1]).amax(dim=0)
            stats[name] = torch.maximum(stats[name], amax_C) if name in stats else amax_C

        return record

    for group in smooth_groups(module):
        handles.append(group.norm.register_forward_hook(hook(group.name)))
    try:
        run_calibration()
    finally:
        for handle in handles:
            handle.remove()
    if not stats:
        raise ValueError("calibration never reached a SigLIP encoder layer: does the data contain images or video?")
    return stats


def smoothing_scales(act_absmax_C: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max_i,k |W_k[i, j]|^(1 - alpha), with channels that never fire left at 1."""
    w_absmax_C = torch.stack([lin.weight.detach().abs().float().amax(dim=0) for lin in linears]).amax(dim=0)
    act = act_absmax_C.to(w_absmax_C.device).clamp(min=1e-5)
    scales_C = act.pow(alpha) / w_absmax_C.clamp(min=1e-5).pow(1.0 - alpha)
    dead = (act_absmax_C.to(w_absmax_C.device) == 0) | (w_absmax_C == 0)
    return torch.where(dead, torch.ones_like(scales_C), scales_C).clamp(min=1e-5)


@torch.no_grad()
def apply_smoothing(module: nn.Module, act_absmax: dict[str, torch.Tensor], alpha: float) -> dict[str, float]:
    """Fold the smoothing scales into every calibrated group in place; returns the largest scale per LayerNorm.

    Groups without statistics (encoder layers past the feature layer, which NVILA never runs) stay as they are.
    """
    summary = {}
    for group in smooth_groups(module):
        if group.name not in act_absmax:
            continue
        scales_C = smoothing_scales(act_absmax[group.name], group.linears, alpha)
        norm = group.norm
        norm.weight.div_(scales_C.to(norm.weight.dtype))
        if norm.bias is not None:
            norm.bias.div_(scales_C.to(norm.bias.dtype))
        for lin in group.linears:
            lin.weight.mul_(scales_C.to(lin.weight.dtype).unsqueeze(0))
        summary[group.name] = float(scales_C.max())
    return summary
