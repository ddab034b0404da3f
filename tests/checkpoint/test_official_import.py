"""Importing a released-layout checkpoint: our model computes what the reference computes from the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official_fixture import VARIANTS, write_official
from PIL import Image
from reference_nvila import ReferenceNVILA

from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.official import IMPORT_KIND, import_official
from nvila_model.processor import NVILAProcessor

QUESTION_IMAGE, QUESTION_VIDEO = "What colour is the square?", "Which way does the dot move?"


def _image(size=(83, 37), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _frames(n=4) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (n, 30, 26, 3), dtype=np.uint8)


def our_logits(ckpt, question, images=None, video=None) -> torch.Tensor:
    model = NVILAForConditionalGeneration.from_pretrained(ckpt).eval()
    processor = NVILAProcessor.from_pretrained(ckpt)
    feats = processor.encode_prompt(question, images=images, video=video)
    with torch.no_grad():
        return model(input_ids=feats["input_ids"][None], pixel_values=feats["pixel_values"],
                     media_layout=feats["media_layout"]).logits[0]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def imported(request, tmp_path_factory):
    src = write_official(tmp_path_factory.mktemp("official"), request.param)
    return src, import_official(src, tmp_path_factory.mktemp("ours") / "ckpt")


@pytest.mark.parametrize("size", [(83, 37), (20, 61)])
def test_image_logits_equal_reference(imported, size):
    src, ckpt = imported
    expected = ReferenceNVILA(src).logits(QUESTION_IMAGE, image=_image(size))
    got = our_logits(ckpt, QUESTION_IMAGE, images=[_image(size)])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_video_logits_equal_reference(imported):
    src, ckpt = imported
    frames = _frames()
    expected = ReferenceNVILA(src).logits(QUESTION_VIDEO, frames=[Image.fromarray(f) for f in frames])
    got = our_logits(ckpt, QUESTION_VIDEO, video=frames)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_imported_directory_is_a_project_checkpoint(imported):
    src, ckpt = imported
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "meta.json",
                 "manifest.json"):
        assert (ckpt / name).is_file(), name
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["kind"] == IMPORT_KIND and meta["source"] == str(src)
    config = NVILAForConditionalGeneration.config_class.from_pretrained(ckpt)
    top = json.loads((src / "config.json").read_text())
    assert config.projector == top["mm_projector"] and config.vision_select_layer == top["mm_vision_select_layer"]
    assert (config.video_token, config.image_token) == ("<vila/video>", "<image>")
    assert config.system_prompt == "You are a helpful assistant" and config.video_frame_sampling == "linspace"


def test_fixture_really_uses_official_names(imported):
    """The fixture mirrors the transformers-4.46 files: SigLIP under vision_model., rope_theta at the top."""
    from safetensors import safe_open

    src, _ = imported
    with safe_open(str(src / "vision_tower" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    llm = json.loads((src / "llm" / "config.json").read_text())
    assert llm["rope_theta"] == 12345.0 and "rope_parameters" not in llm
