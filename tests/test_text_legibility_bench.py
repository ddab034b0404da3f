"""bench/text_legibility.py: its reader sees what the vision tower sees of a picture (the fixed resize's one tile,
or Dynamic-S2's largest-scale grid stitched back in order), each picture minus its background colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.single_task import subset_corpus
from bench.text_legibility import batch_of, pixels, with_grain
from nvila_model.data.manifest import read_manifest
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import load_tokenizer


def test_the_reader_gets_the_pixels_of_each_resolution_and_the_vocabulary_knob(tmp_path) -> None:
    data, tok_dir = subset_corpus(tmp_path, {"text": (4, 2)}, seed=0, knobs={"text": {"words": ["nue", "une"]}})
    records = read_manifest(data / "train.jsonl")
    assert {r["conversations"][-1]["value"] for r in records} <= {"nue", "une"}
    image = Image.open(data / records[0]["image"]).convert("RGB")
    tokenizer = load_tokenizer(tok_dir)
    for dynamic_s2 in (False, True):
        config = build_config("tiny", dynamic_s2=dynamic_s2)
        processor = NVILAProcessor(tokenizer, config)
        cols, rows = processor.image_grid(image.width, image.height) if dynamic_s2 else (1, 1)
        t = config.tile_size
        resized = np.asarray(image.resize((cols * t, rows * t), Image.Resampling.BICUBIC), dtype=np.float32) / 255
        expected_CHW = torch.from_numpy((resized - config.image_mean) / config.image_std).permute(2, 0, 1)
        assert cols * rows > 1 or not dynamic_s2, "the frontier's wide text pictures are tiled"
        torch.testing.assert_close(pixels(processor, image, dynamic_s2), expected_CHW)


def test_a_batch_is_background_free_and_padded_and_grain_is_seeded() -> None:
    plain = torch.full((3, 4, 6), 0.7)
    marked = plain.clone()
    marked[:, 1, 2] = -1.0
    batch = batch_of([plain, marked[:, :, :4]])
    assert batch.shape == (2, 3, 4, 6)
    assert batch[0].abs().max() == 0 and batch[1, :, 1, 2].tolist() == pytest.approx([-1.7] * 3)
    assert batch[1].abs().sum().item() == pytest.approx(3 * 1.7, abs=1e-5)
    image = Image.new("RGB", (8, 8), (100, 100, 100))
    assert with_grain(image, 0.0, np.random.default_rng(0)) is image
    noisy = [np.asarray(with_grain(image, 0.2, np.random.default_rng(1))) for _ in range(2)]
    assert (noisy[0] == noisy[1]).all() and (noisy[0] != 100).any()
    assert (noisy[0][..., 0] == noisy[0][..., 2]).all(), "one grain value per pixel for all three channels"


def test_the_benches_read_the_answer_set_and_chance_the_corpus_states(tmp_path) -> None:
    from bench.single_task import subset_table

    data, _ = subset_corpus(tmp_path, {"text": (4, 2)}, seed=0, knobs={"text": {"words": ["nue", "une", "enu"]}})
    table = subset_table(data)
    assert list(table) == ["text"]
    assert table["text"]["answers"] == ["enu", "nue", "une"] and table["text"]["chance"] == round(1 / 3, 4)
