"""Projector shapes and token counts, STC padding, Dynamic-S2 grid choice and feature merging."""

import pytest
import torch
from torch import nn

from nvila_model.dynamic_s2 import choose_grid, merge_scales, num_tiles, round_grid, search_grid, stitch, unstitch
from nvila_model.presets import build_config
from nvila_model.projector import Projector, space_to_channel


@pytest.mark.parametrize("kind,tokens", [("none", 1024), ("mlp_downsample", 256), ("mlp_downsample_3x3_fix", 121)])
def test_paper_tokens_per_tile(kind, tokens):
    """A 448 px tile with patch 14 is a 32x32 map: 1024 / 256 / 121 tokens."""
    proj = Projector(kind, in_channels=8, out_channels=16)
    out = proj(torch.randn(2, 32, 32, 8))
    assert out.shape[0] == 2 and out.shape[1] * out.shape[2] == tokens and out.shape[-1] == 16
    assert build_config("nvila-8b", projector=kind).tokens_per_tile == tokens


def test_projector_layer_shapes_match_reference():
    c, d = 12, 20
    two = [m for m in Projector("mlp_downsample", c, d).layers]
    assert [type(m) for m in two] == [nn.LayerNorm, nn.Linear, nn.GELU, nn.Linear]
    assert two[0].normalized_shape == (4 * c,) and (two[1].in_features, two[1].out_features) == (4 * c, d)
    three = [m for m in Projector("mlp_downsample_3x3_fix", c, d).layers]
    assert [type(m) for m in three] == [nn.LayerNorm, nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear, nn.GELU, nn.Linear]
    assert three[0].normalized_shape == (9 * c,) and (three[1].in_features, three[1].out_features) == (9 * c, 3 * c)
    assert three[3].normalized_shape == (3 * c,) and (three[4].in_features, three[4].out_features) == (3 * c, d)


def test_space_to_channel_groups_neighbours_and_zero_pads():
    x = torch.arange(5 * 5, dtype=torch.float32).reshape(1, 5, 5, 1)
    y = space_to_channel(x, 2)
    assert y.shape == (1, 3, 3, 4)
    assert y[0, 0, 0].tolist() == [0, 1, 5, 6]  # top-left 2x2 block, row-major
    assert y[0, 2, 2].tolist() == [24, 0, 0, 0]  # bottom-right corner is padded with zeros
    with pytest.raises(ValueError, match="unknown"):
        Projector("mlp_4x4", 4, 4)


@pytest.mark.parametrize("size,grid", [
    ((1000, 1000), (3, 3)),   # square
    ((2000, 800), (5, 2)),    # landscape 2.5:1
    ((800, 2000), (2, 5)),    # portrait 1:2.5
    ((1500, 1000), (4, 3)),   # 1.5:1 -> closest is 4x3
    ((4000, 500), (9, 1)),    # 8:1 panorama -> closest allowed is 9x1
    ((1, 1), (3, 3)),         # tiny image still gets the minimum grid
])
def test_search_grid_table(size, grid):
    assert search_grid(*size, tile=448, min_tiles=9, max_tiles=12) == grid


def test_search_grid_tie_prefers_larger_grid_only_for_large_images():
    # 1x1, 2x2 and 3x3 tie on aspect; the larger grid wins only when area > half of its area
    assert search_grid(448, 448, 448, 1, 12) == (1, 1)
    assert search_grid(900, 900, 448, 1, 12) == (2, 2)
    assert search_grid(1344, 1344, 448, 1, 12) == (3, 3)


def test_round_grid_is_the_papers_example():
    assert round_grid(800, 2000, 448, 12) == (2, 4)  # 800x2000 -> 896x1792
    assert round_grid(10, 10, 448, 12) == (1, 1)
    cols, rows = round_grid(6000, 6000, 448, 12)
    assert cols * rows <= 12
    with pytest.raises(ValueError, match="positive"):
        choose_grid(0, 10, 448, "search", 9, 12)


def test_stitch_roundtrip_and_merge_shapes():
    tiles = torch.randn(6, 4, 4, 3)
    assert torch.equal(unstitch(stitch(tiles, 2, 3), 4, 4), tiles)
    scales, tile = [32, 64, 96], 32
    feats = torch.randn(num_tiles(scales, tile, cols=4, rows=3), 8, 8, 5)
    merged = merge_scales(feats, scales, tile, cols=4, rows=3)
    assert merged.shape == (12, 8, 8, 15)
    # the largest scale's channels are its own tiles, untouched
    assert torch.equal(merged[..., 10:], feats[-12:])
    # the smallest scale (one tile) is area-upsampled: every output tile sees a constant 1/... block of it
    assert torch.allclose(stitch(merged[..., :5], 3, 4)[0, 0], feats[0, 0, 0])
