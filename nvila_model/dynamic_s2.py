"""Dynamic-S2: aspect-preserving multi-scale tiling, and merging the per-scale feature maps back into one.

Hand-written because no maintained library implements NVILA's Dynamic-S2 (the s2wrapper package only does
square scales). Grid choice follows REFERENCE.md section 2; both readings of the largest-scale rule are offered.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache  # a handful of (min, max) pairs per run, each asked once per image
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with min_tiles <= cols*rows <= max_tiles, by tile count then cols."""
    grids = {(c, r) for n in range(min_tiles, max_tiles + 1) for c in range(1, n + 1) for r in range(1, n + 1)
             if min_tiles <= c * r <= max_tiles}
    return tuple(sorted(grids, key=lambda g: (g[0] * g[1], g[0])))


def search_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """The repository's rule: the grid whose aspect ratio is closest to the image's; on a tie the larger grid
    wins when the image's area exceeds half of that grid's area. Returns (cols, rows)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def round_grid(width: int, height: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """The paper's reading: each side rounded to the nearest multiple of the tile (at least one), shrunk
    proportionally while over `max_tiles` (800x2000 at 448 -> 2x4). Returns (cols, rows)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    cols, rows = max(1, round(width / tile)), max(1, round(height / tile))
    while cols * rows > max_tiles:
        if cols >= rows:
            cols -= 1
        else:
            rows -= 1
    return cols, rows


def choose_grid(width: int, height: int, tile: int, mode: str, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(cols, rows) of the largest scale for an image of width x height."""
    if mode == "search":
        return search_grid(width, height, tile, min_tiles, max_tiles)
    if mode == "round":
        return round_grid(width, height, tile, max_tiles)
    raise ValueError(f"unknown Dynamic-S2 grid mode {mode!r}")


def num_tiles(scales: list[int], tile: int, cols: int, rows: int) -> int:
    """Tiles the vision tower encodes for one image: the square scales' tiles plus the largest scale's grid."""
    return sum((s // tile) ** 2 for s in scales[:-1]) + cols * rows


def stitch(tiles_NhwC: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Row-major tiles [rows*cols, h, w, C] -> one map [rows*h, cols*w, C]."""
    n, h, w, c = tiles_NhwC.shape
    assert n == rows * cols, (n, rows, cols)
    return tiles_NhwC.reshape(rows, cols, h, w, c).permute(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def unstitch(map_HWC: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """One map [rows*h, cols*w, C] -> row-major tiles [rows*cols, h, w, C]."""
    big_h, big_w, c = map_HWC.shape
    rows, cols = big_h // h, big_w // w
    assert rows * h == big_h and cols * w == big_w, (map_HWC.shape, h, w)
    return map_HWC.reshape(rows, h, cols, w, c).permute(0, 2, 1, 3, 4).reshape(rows * cols, h, w, c)


def merge_scales(feats_NhwC: torch.Tensor, scales: list[int], tile: int, cols: int, rows: int) -> torch.Tensor:
    """Tile features of one image (square scales first, then the largest grid) -> multi-scale tile features.

    Each scale's tiles are stitched into a map, resized to the largest map with area interpolation in fp32, the maps
    are concatenated on channels and cut back into tiles: returns [rows*cols, h, w, len(scales)*C].
    """
    n, h, w, c = feats_NhwC.shape
    assert n == num_tiles(scales, tile, cols, rows), (n, scales, cols, rows)
    target = (rows * h, cols * w)
    maps, start = [], 0
    for scale in scales[:-1]:
        side = scale // tile
        maps.append(stitch(feats_NhwC[start:start + side * side], side, side))
        start += side * side
    maps.append(stitch(feats_NhwC[start:], rows, cols))
    resized = []
    for m_HWC in maps:
        if tuple(m_HWC.shape[:2]) != target:
            m_CHW = m_HWC.permute(2, 0, 1).unsqueeze(0).float()
            m_HWC = F.interpolate(m_CHW, size=target, mode="area").squeeze(0).permute(1, 2, 0).to(feats_NhwC.dtype)
        resized.append(m_HWC)
    return unstitch(torch.cat(resized, dim=-1), h, w)
