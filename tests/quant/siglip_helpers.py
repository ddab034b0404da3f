"""A tiny SigLIP with outlier LayerNorm channels, shared by the SmoothQuant and W8A8 tests."""

from __future__ import annotations

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from nvila_model.quant.smoothquant import smooth_groups


def siglip_with_outliers() -> SiglipVisionModel:
    """A 2-layer SigLIP whose LayerNorm gains have outlier channels (what smoothing exists for)."""
    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=4, vision_use_head=False)
    model = SiglipVisionModel(cfg).eval()
    with torch.no_grad():
        for group in smooth_groups(model):
            group.norm.weight[:4] *= 30.0
            group.norm.bias.normal_(0, 0.1)
    return model
