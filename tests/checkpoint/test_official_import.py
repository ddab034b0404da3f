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
from nvila_model.official import IMPORT_KIND, import_official, layout
from nvila_model.processor import NVILAProcessor

QUESTION_IMAGE, QUESTION_VIDEO = "What colour is the square?", "Which way does the dot move?"


def _image(size=(83, 37), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _frames(n=4) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (n, 30, 26, 3), dtype=np.uint8)


def load_ours(ckpt) -> tuple[NVILAForConditionalGeneration, NVILAProcessor]:
    return NVILAForConditionalGeneration.from_pretrained(ckpt).eval(), NVILAProcessor.from_pretrained(ckpt)


def our_logits(ours, question, images=None, video=None) -> torch.Tensor:
    model, processor = ours
    feats = processor.encode_prompt(question, images=images, video=video)
    with torch.no_grad():
        return model(input_ids=feats["input_ids"][None], pixel_values=feats["pixel_values"],
                     media_layout=feats["media_layout"]).logits[0]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def imported(request, tmp_path_factory):
    src = write_official(tmp_path_factory.mktemp("official"), request.param)
    ckpt = import_official(src, tmp_path_factory.mktemp("ours") / "ckpt")
    return src, ckpt, ReferenceNVILA(src), load_ours(ckpt)


@pytest.mark.parametrize("size", [(83, 37), (20, 61)])
def test_image_logits_equal_reference(imported, size):
    _, _, reference, ours = imported
    expected = reference.logits(QUESTION_IMAGE, images=[_image(size)])
    got = our_logits(ours, QUESTION_IMAGE, images=[_image(size)])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_two_images_are_one_tile_each_like_the_reference(imported):
    _, _, reference, ours = imported
    images = [_image((83, 37)), _image((30, 50), seed=4)]
    torch.testing.assert_close(our_logits(ours, QUESTION_IMAGE, images=images),
                               reference.logits(QUESTION_IMAGE, images=images), atol=2e-5, rtol=1e-4)


def test_video_logits_equal_reference(imported):
    _, _, reference, ours = imported
    frames = _frames()
    expected = reference.logits(QUESTION_VIDEO, frames=[Image.fromarray(f) for f in frames])
    got = our_logits(ours, QUESTION_VIDEO, video=frames)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_imported_directory_is_a_project_checkpoint(imported):
    src, ckpt, _, _ = imported
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "meta.json",
                 "manifest.json"):
        assert (ckpt / name).is_file(), name
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["kind"] == IMPORT_KIND and meta["source"] == str(src)
    config = NVILAForConditionalGeneration.config_class.from_pretrained(ckpt)
    top = json.loads((src / "config.json").read_text())
    assert layout.OFFICIAL_KIND[config.projector] == top["mm_projector"]
    assert config.vision_select_layer == top["mm_vision_select_layer"]
    assert (config.video_token, config.image_token) == ("<vila/video>", "<image>")
    assert config.system_prompt == "You are a helpful assistant" and config.video_frame_sampling == "linspace"


def test_fixture_really_uses_official_names(imported):
    """The fixture mirrors the transformers-4.46 files: SigLIP under vision_model., rope_theta at the top."""
    from safetensors import safe_open

    src = imported[0]
    with safe_open(str(src / "vision_tower" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    llm = json.loads((src / "llm" / "config.json").read_text())
    assert llm["rope_theta"] == 12345.0 and "rope_parameters" not in llm


def test_reference_frame_picks():
    """round(linspace(0, n-1, k)) as in the reference's _load_video; numpy rounds 3.5 to 4 and 10.5 to 10."""
    from nvila_model.video import frame_indices

    assert frame_indices(10, 4, "linspace") == [0, 3, 6, 9]
    assert frame_indices(8, 3, "linspace") == [0, 4, 7]
    assert frame_indices(22, 3, "linspace") == [0, 10, 21]
    assert frame_indices(2, 4, "linspace") == [0, 0, 1, 1]
    assert frame_indices(10, 4) == [1, 3, 6, 8]  # our default: segment centres


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_tied_embeddings_and_model_dtype_kept(tmp_path, dtype):
    src = write_official(tmp_path / "src", "plain_3x3", tie_word_embeddings=True, model_dtype=f"torch.{dtype}")
    model, _ = load_ours(import_official(src, tmp_path / "ckpt"))
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    if dtype == "float32":
        image = _image()
        torch.testing.assert_close(our_logits((model, NVILAProcessor.from_pretrained(tmp_path / "ckpt")),
                                              QUESTION_IMAGE, images=[image]),
                                   ReferenceNVILA(src).logits(QUESTION_IMAGE, images=[image]), atol=2e-5, rtol=1e-4)
