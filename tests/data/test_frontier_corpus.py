"""The corpus the frontier asks for (params.yaml `frontier.settings`) has, by construction, the properties its
effects need; the standard corpus is unchanged by the knobs that make them.

- text letters are narrower than 2 pixels after a fixed resize of the whole image to one tile, and at least 5 pixels
  wide (text at least 12 pixels high) in Dynamic-S2's largest-scale tiles. That is geometry, not legibility: a
  small CNN still reads the word from the fixed resize's pixels (bench/text_legibility.py, docs/FRONTIER.md);
- a flash lasts fewer frames than the stride of the sparse sampling, so the sparse frames miss most flashes while
  the dense frames see every one, each in its own temporal-averaging group.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from nvila_model.data.config import GenerateConfig, subset_configs
from nvila_model.data.generate import SPLITS, SUBSETS, _split_size, build_split
from nvila_model.data.scenes import glyph_cell
from nvila_model.dynamic_s2 import choose_grid
from nvila_model.params import assign
from nvila_model.presets import build_config
from nvila_model.video import frame_indices

REPO = Path(__file__).resolve().parents[2]
NARROW_PX = 2.0  # the smallest legible pixel fonts draw a letter 3 pixels wide
LEGIBLE_PX, LEGIBLE_HEIGHT_PX = 5.0, 12.0


def frontier_params() -> dict:
    """params.yaml with the frontier's settings written in (what every variant's run reads)."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in data["frontier"]["settings"].items():
        assign(data, key, value)
    return data


def frontier_scenes(subset: str, count: int = 400) -> list[dict]:
    generate = frontier_params()["generate"]
    sc = subset_configs(GenerateConfig(**generate))[subset]
    return [r["scene"] for r in build_split(SUBSETS[subset], sc, "test", count, np.random.default_rng(7))]


def test_frontier_text_letters_are_narrow_at_a_fixed_resize_and_wide_in_dynamic_s2_tiles() -> None:
    data = frontier_params()
    config = build_config(data["model"]["preset"], **data["model"]["overrides"])
    tile = config.tile_size
    for scene in frontier_scenes("text"):
        fixed_w, fixed_h = glyph_cell(scene, tile, tile)  # the whole picture squeezed into one tile
        assert fixed_w < NARROW_PX, (scene, fixed_w)
        cols, rows = choose_grid(scene["w"], scene["h"], tile, config.s2_grid_mode, config.s2_min_tiles,
                                 config.s2_max_tiles)
        s2_w, s2_h = glyph_cell(scene, cols * tile, rows * tile)  # Dynamic-S2's largest scale
        assert s2_w >= LEGIBLE_PX and s2_h >= LEGIBLE_HEIGHT_PX, (scene, cols, rows, s2_w, s2_h)


def test_frontier_flashes_are_shorter_than_the_sparse_stride_and_seen_by_dense_frames() -> None:
    data = frontier_params()
    dense_frames = data["video_sft"]["num_video_frames"]
    pool = data["video_sft"]["video_pool_size"]
    sparse_frames = dense_frames // pool  # the sparse variant: as many frames as the dense one has groups
    seen_sparse = total = 0
    for scene in frontier_scenes("flashes"):
        frames = scene["frames"]
        sparse = frame_indices(frames, sparse_frames)
        dense = frame_indices(frames, dense_frames)
        flashes = SUBSETS["flashes"].flash_frames(scene)
        assert len(flashes) == int(SUBSETS["flashes"].answer(scene, "flashes"))
        for start, end in flashes:
            assert end - start < frames / sparse_frames, "a flash is shorter than the sparse stride"
            assert any(start <= t < end for t in dense), "the dense frames see every flash"
            seen_sparse += any(start <= t < end for t in sparse)
            total += 1
        groups = [dense.index(next(t for t in dense if start <= t < end)) // pool for start, end in flashes]
        assert len(set(groups)) == len(groups), "each flash falls in its own averaging group: they can be counted"
    assert seen_sparse / total < 0.35, f"sparse frames see {seen_sparse}/{total} flashes"


def test_a_flash_shows_in_exactly_its_frames() -> None:
    flashes = SUBSETS["flashes"]
    for scene in frontier_scenes("flashes", count=5):
        video = flashes.render(scene).astype(int)
        x, y = int(scene["shape"]["x"]), int(scene["shape"]["y"])
        lit = [t for t in range(scene["frames"]) if abs(video[t, y, x] - np.asarray(scene["bg"])).sum() > 60]
        assert lit == [t for a, b in flashes.flash_frames(scene) for t in range(a, b)]


def test_the_knobs_leave_the_standard_corpus_unchanged() -> None:
    """The records of the standard corpus (scale 0.2, seed 0), media excluded, hash as before the knobs existed."""
    cfg = GenerateConfig(scale=0.2, seed=0)
    digest = hashlib.sha256()
    for split_idx, split in enumerate(SPLITS):
        for subset_idx, (name, sc) in enumerate(subset_configs(cfg).items()):
            rng = np.random.default_rng([cfg.seed, subset_idx, split_idx])
            records = build_split(SUBSETS[name], sc, split, _split_size(sc, split, cfg.scale), rng)
            digest.update(json.dumps(records, sort_keys=True).encode())
    assert digest.hexdigest() == "a2b0e01079208f133c64ac532e4a667c2ba3c600b64b061c9471efc2f0e06a22"


def test_knobs_apply_to_every_subset_then_per_subset_and_bad_values_are_refused() -> None:
    configs = subset_configs(GenerateConfig(all_subsets={"noise": 0.25}, subsets={"text": {"noise": 0.0}}))
    assert configs["counting"].noise == 0.25 and configs["text"].noise == 0.0
    for bad, match in (({"frames": 30, "slot_frames": 4}, "multiple of slot_frames"),
                       ({"slot_frames": 2, "event_frames": 3}, "event_frames must be in"),
                       ({"glyph_px": [12, 8]}, "glyph_px")):
        with pytest.raises(ValueError, match=match):
            GenerateConfig(subsets={"flashes": bad})
