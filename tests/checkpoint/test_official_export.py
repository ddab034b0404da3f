"""Exporting to the released layout: the reference computes from the export what our model computes, and
import -> export -> import reproduces the logits exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official_fixture import write_official
from PIL import Image
from reference_nvila import ReferenceNVILA
from safetensors import safe_open
from test_official_import import QUESTION_IMAGE, QUESTION_VIDEO, _frames, _image, load_ours, our_logits

from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.official import export_official, import_official
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor

OFFICIAL_FILES = ["config.json", "llm/config.json", "llm/model.safetensors", "llm/tokenizer.json",
                  "llm/tokenizer_config.json", "vision_tower/config.json", "vision_tower/model.safetensors",
                  "vision_tower/preprocessor_config.json", "mm_projector/config.json",
                  "mm_projector/model.safetensors"]


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("trip")
    first = import_official(write_official(root / "src"), root / "first")
    exported = export_official(first, root / "exported")
    return first, exported, import_official(exported, root / "second")


@pytest.fixture(scope="module", params=["none", "running"])
def scratch_export(request, tmp_path_factory, tokenizer):
    """A checkpoint trained here (our tokenizer with `<video>`, the tiny preset) exported to the reference layout;
    uncentred, or with a running centring whose average is far from zero (folded into the projector's bias)."""
    root = tmp_path_factory.mktemp("scratch")
    config = build_config("tiny", video_frame_sampling="linspace", center_visual_tokens=request.param)
    torch.manual_seed(3)
    model = NVILAForConditionalGeneration(config)
    for name, param in model.projector.named_parameters():  # non-trivial LayerNorm so channel order matters
        if "weight" in name and param.ndim == 1:
            param.data.uniform_(0.5, 1.5)
    if request.param == "running":
        model.token_centre.mean.normal_(0.0, 1.0)
        model.token_centre.updates.fill_(100)
    model.save_pretrained(root / "ckpt")
    NVILAProcessor(tokenizer, config).save_pretrained(root / "ckpt")
    return root / "ckpt", export_official(root / "ckpt", root / "exported")


@pytest.mark.parametrize("media", ["image", "video"])
def test_import_export_import_reproduces_logits_exactly(round_trip, media):
    first, _, second = round_trip
    kwargs = {"images": [_image()]} if media == "image" else {"video": _frames()}
    question = QUESTION_IMAGE if media == "image" else QUESTION_VIDEO
    assert torch.equal(our_logits(load_ours(first), question, **kwargs),
                       our_logits(load_ours(second), question, **kwargs))


def test_export_has_the_official_layout(round_trip):
    _, exported, _ = round_trip
    for name in OFFICIAL_FILES:
        assert (exported / name).is_file(), name
    top = json.loads((exported / "config.json").read_text())
    assert (top["model_type"], top["architectures"]) == ("llava_llama", ["LlavaLlamaModel"])
    assert top["s2_scales"] == "20,40,60" and top["mm_projector_cfg"]["mm_projector_type"] == "mlp_downsample"
    assert json.loads(top["video_encoder"])["pool_sizes"] == [[2, 1, 1]] and top["resume_path"]
    with safe_open(str(exported / "vision_tower" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    with safe_open(str(exported / "mm_projector" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == [f"layers.{j}.{p}" for j in (1, 2, 4) for p in ("bias", "weight")]
    llm = json.loads((exported / "llm" / "config.json").read_text())
    assert llm["rope_theta"] == 12345.0 and llm["torch_dtype"] == "float32"
    assert "<|im_start|>" in json.loads((exported / "llm" / "tokenizer_config.json").read_text())["chat_template"]


def test_reference_computes_our_logits_from_a_scratch_export(scratch_export, tokenizer):
    ckpt, exported = scratch_export
    vocab = json.loads((exported / "llm" / "tokenizer.json").read_text())["added_tokens"]
    assert {"<image>", "<vila/video>", "<vila/sentinel>"} <= {t["content"] for t in vocab}
    reference = ReferenceNVILA(exported)
    image = _image((90, 40))
    ours = load_ours(ckpt)
    torch.testing.assert_close(our_logits(ours, QUESTION_IMAGE, images=[image]),
                               reference.logits(QUESTION_IMAGE, images=[image]), atol=2e-5, rtol=1e-4)
    frames = np.random.default_rng(2).integers(0, 255, (8, 40, 36, 3), dtype=np.uint8)
    torch.testing.assert_close(our_logits(ours, QUESTION_VIDEO, video=frames),
                               reference.logits(QUESTION_VIDEO, frames=[Image.fromarray(f) for f in frames]),
                               atol=2e-5, rtol=1e-4)


def test_export_refuses_what_the_reference_can_not_express(tmp_path, tokenizer):
    for overrides, refusal in (({"s2_grid_mode": "round", "center_visual_tokens": False}, "s2_grid_mode='round'"),
                               ({}, "center_visual_tokens=True"), ({"center_visual_tokens": "item"}, "'item'")):
        config = build_config("tiny", **overrides)
        NVILAForConditionalGeneration(config).save_pretrained(tmp_path / "ckpt")
        NVILAProcessor(tokenizer, config).save_pretrained(tmp_path / "ckpt")
        with pytest.raises(ValueError, match=refusal):
            export_official(tmp_path / "ckpt", tmp_path / "out")
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"kind": "quantized"}))
    with pytest.raises(ValueError, match="quantized"):
        export_official(tmp_path / "ckpt", tmp_path / "out")


def test_cli_import_then_export(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    src = write_official(tmp_path / "src", "plain_3x3")
    runner = CliRunner()
    imported = runner.invoke(app, ["import", str(src), str(tmp_path / "ours")])
    assert imported.exit_code == 0 and f"wrote {tmp_path / 'ours'}" in imported.output, imported.output
    exported = runner.invoke(app, ["export", str(tmp_path / "ours"), str(tmp_path / "back")])
    assert exported.exit_code == 0 and (tmp_path / "back" / "mm_projector" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "back" / "mm_projector" / "config.json").read_text())["mm_projector_type"] == \
        "mlp_downsample_3x3_fix"
