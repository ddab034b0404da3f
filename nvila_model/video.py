"""Video: uniform frame sampling over the whole clip and temporal averaging of projected tokens."""

from __future__ import annotations

import numpy as np
import torch


def frame_indices(total_frames: int, num_frames: int, rule: str = "centre") -> list[int]:
    """`num_frames` evenly spaced indices covering the whole video.

    `rule="centre"`: the centre of each of `num_frames` equal segments; `rule="linspace"`: the reference's
    round(linspace(0, total_frames - 1, num_frames)), first and last frame included (numpy rounds halves to even).
    A video shorter than `num_frames` repeats frames so the model always sees the configured count.
    """
    if total_frames <= 0:
        raise ValueError(f"video has no frames (total_frames={total_frames})")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if rule == "linspace":
        return [int(i) for i in np.round(np.linspace(0, total_frames - 1, num_frames))]
    if rule != "centre":
        raise ValueError(f"unknown frame sampling rule {rule!r}; choose 'centre' or 'linspace'")
    segment = total_frames / num_frames
    return [min(total_frames - 1, int(segment * (i + 0.5))) for i in range(num_frames)]


def temporal_pool(tokens_FTD: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Average the projected tokens of each group of `pool_size` consecutive frames: [F, T, D] -> [F/k, T, D]."""
    frames = tokens_FTD.shape[0]
    if pool_size < 1 or frames % pool_size:
        raise ValueError(f"{frames} video frames cannot be averaged in groups of {pool_size}: "
                         "the frame count must be a multiple of video_pool_size")
    if pool_size == 1:
        return tokens_FTD
    return tokens_FTD.reshape(frames // pool_size, pool_size, *tokens_FTD.shape[1:]).mean(dim=1)
