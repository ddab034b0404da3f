"""Visual token counts from the model config alone (no tokenizer, no weights): what the processor expands each
`<image>` / `<video>` marker to, and what validation counts before any tokenizer exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvila_model.dynamic_s2 import choose_grid

if TYPE_CHECKING:
    from nvila_model.config import NVILAConfig


def image_grid(config: NVILAConfig, width: int, height: int) -> tuple[int, int]:
    """(cols, rows) of the Dynamic-S2 grid at the largest scale for a `width` x `height` image."""
    c = config
    return choose_grid(width, height, c.tile_size, c.s2_grid_mode, c.s2_min_tiles, c.s2_max_tiles)


def tiles_image(config: NVILAConfig, single_image: bool) -> bool:
    """Whether an image goes through Dynamic-S2 tiling (only a sample's one image, and only if configured)."""
    return config.dynamic_s2 and config.s2_tile_images and single_image


def num_image_tokens(config: NVILAConfig, width: int, height: int, single_image: bool = True) -> int:
    """Visual tokens for one image (excluding its trailing newline); needs only the config, no tokenizer."""
    if tiles_image(config, single_image):
        cols, rows = image_grid(config, width, height)
        return cols * rows * config.tokens_per_tile
    return config.tokens_per_tile


def num_video_tokens(config: NVILAConfig, frames: int) -> int:
    """Visual tokens for `frames` sampled video frames (excluding the newline after each frame group)."""
    if frames % config.video_pool_size:
        raise ValueError(f"{frames} frames are not divisible by video_pool_size {config.video_pool_size}")
    return frames // config.video_pool_size * config.tokens_per_tile
