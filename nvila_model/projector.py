"""Multimodal projectors with spatial-to-channel (STC) token compression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nvila_model.config import PROJECTOR_FACTORS


def space_to_channel(x_NHWC: torch.Tensor, factor: int) -> torch.Tensor:
    """Group each factor x factor block of the map into one position with factor^2 * C channels.

    Odd sides are zero-padded (right/bottom) up to a multiple of the factor, as the reference does (32 -> 33 for 3x3).
    Hand-written because no library ships NVILA's STC; it is a pad plus two reshapes.
    """
    n, h, w, c = x_NHWC.shape
    pad_h, pad_w = (-h) % factor, (-w) % factor
    if pad_h or pad_w:
        x_NHWC = F.pad(x_NHWC, (0, 0, 0, pad_w, 0, pad_h))
        h, w = h + pad_h, w + pad_w
    x = x_NHWC.reshape(n, h // factor, factor, w // factor, factor, c)
    x = x.permute(0, 1, 3, 2, 4, 5)  # N, H/f, W/f, f(row), f(col), C
    out_NhwC = x.reshape(n, h // factor, w // factor, factor * factor * c)
    assert out_NhwC.shape[-1] == factor * factor * c
    return out_NhwC


class Projector(nn.Module):
    """`none`: Linear-GELU-Linear per patch (the VILA-1.5-like baseline).
    `mlp_downsample` / `mlp_downsample_2x2_fix` (2x2 STC, two names of one block): LayerNorm(4C) -> Linear(4C, D)
    -> GELU -> Linear(D, D).
    `mlp_downsample_3x3_fix` (3x3 STC): LayerNorm(9C) -> Linear(9C, 3C) -> GELU -> LayerNorm(3C) -> Linear(3C, D)
    -> GELU -> Linear(D, D).
    """

    def __init__(self, kind: str, in_channels: int, out_channels: int):
        super().__init__()
        if kind not in PROJECTOR_FACTORS:
            raise ValueError(f"projector {kind!r} unknown; choose one of {sorted(PROJECTOR_FACTORS)}")
        self.kind = kind
        self.factor = PROJECTOR_FACTORS[kind]
        c, d = in_channels, out_channels
        if kind == "none":
            layers = [nn.Linear(c, d), nn.GELU(), nn.Linear(d, d)]
        elif self.factor == 2:
            layers = [nn.LayerNorm(4 * c), nn.Linear(4 * c, d), nn.GELU(), nn.Linear(d, d)]
        else:
            layers = [nn.LayerNorm(9 * c), nn.Linear(9 * c, 3 * c), nn.GELU(), nn.LayerNorm(3 * c),
                      nn.Linear(3 * c, d), nn.GELU(), nn.Linear(d, d)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x_NHWC: torch.Tensor) -> torch.Tensor:
        """Feature maps [N, H, W, C] -> projected token maps [N, ceil(H/f), ceil(W/f), D]."""
        if self.factor > 1:
            x_NHWC = space_to_channel(x_NHWC, self.factor)
        return self.layers(x_NHWC)
