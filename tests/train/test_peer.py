"""The peer: transformers' LLaVA at the preset's sizes, its inputs (one tile per image, frames as images, no
compression), training with the stock Trainer, and evaluation through `nvila eval`'s code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nvila_model.peer.config import PeerConfig
from nvila_model.peer.model import PeerCollator, PeerProcessor, build_peer, peer_inputs_config
from nvila_model.processor import NVILAProcessor
from nvila_model.train.config import ModelParams


@pytest.fixture()
def peer(tokenizer):
    config = peer_inputs_config(ModelParams(preset="tiny", overrides={"projector": "mlp_downsample",
                                                                      "text.intermediate_size": 192}), 4)
    torch.manual_seed(0)
    return build_peer(config, tokenizer), PeerProcessor(NVILAProcessor(tokenizer, config))


def test_the_peer_is_transformers_llava_at_the_preset_sizes(peer):
    from transformers import LlavaForConditionalGeneration

    model, processor = peer
    assert type(model) is LlavaForConditionalGeneration
    assert processor.config.projector == "none" and not processor.config.dynamic_s2, "NVILA settings do not apply"
    assert model.config.text_config.intermediate_size == 192, "vision./text. overrides give the sizes"
    assert model.config.vision_config.hidden_size == 64 and model.config.text_config.hidden_size == 128
    linears = [m for m in model.model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 128), (128, 128)]


def test_frames_are_images_and_every_patch_is_a_token(peer):
    model, processor = peer
    frames = np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)
    video = processor.encode([{"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "up"}],
                             video=frames)
    image = processor.encode([{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
                             images=[Image.new("RGB", (90, 30), (200, 0, 0))])
    cfg = processor.config
    assert int((video["input_ids"] == cfg.image_token_id).sum()) == 4 * 64 == 4 * cfg.tokens_per_tile
    assert not (video["input_ids"] == cfg.video_token_id).any()
    assert video["pixel_values"].shape == (4, 3, 32, 32) and image["pixel_values"].shape == (1, 3, 32, 32)
    batch = PeerCollator(processor)([video, None, image])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 5
    assert torch.isfinite(model(**batch).loss)
    prompt = processor.pad([processor.encode([{"from": "human", "value": "<image>\nWhat colour?"}],
                                             images=[Image.new("RGB", (30, 30))], add_generation_prompt=True)],
                           padding_side="left")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 3 or int(out[0, -1]) == model.generation_config.eos_token_id


def test_peer_trains_with_the_stock_trainer_and_evaluates(project, corpus_dir):
    from nvila_model.checkpoint import load_checkpoint
    from nvila_model.data.registry import DatasetsConfig
    from nvila_model.evaluate import run_eval
    from nvila_model.peer.train import run_peer_train
    from nvila_model.train.config import EvalConfig
    from tests.train.conftest import DATASETS

    cfg = PeerConfig(batch_size=4, max_steps=3, logging_steps=1, save_steps=3, precision="fp32")
    data = corpus_dir / "data/raw/synth"
    out = run_peer_train("llava", cfg, ModelParams(), DatasetsConfig(**DATASETS), data=data,
                         tokenizer=corpus_dir / "runs/tokenizer", out=project / "runs/peers/llava/model")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["trainer"] == "transformers.Trainer" and meta["model_class"] == "LlavaForConditionalGeneration"
    assert meta["global_steps"] == 3 and meta["train_seconds"] > 0 and meta["num_train_records"] > 100
    assert [row["step"] for row in json.loads((out / "log_history.json").read_text())] == [1, 2, 3]
    model, processor = load_checkpoint(out, "cpu")
    assert type(processor) is PeerProcessor and not model.training
    metrics = run_eval(EvalConfig(limit_per_subset=1, efficiency_samples=1, decode_tokens=2),
                       DatasetsConfig(**DATASETS), data=data, checkpoint=out, out=project / "runs/peers/llava/eval")
    assert metrics["num_samples"] == 9 and 0 <= metrics["acc_mean"] <= 1 and metrics["prefill_ms"] > 0
    assert metrics["chance_text"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="peer 'llama' unknown"):
        run_peer_train("llama", cfg, ModelParams(), DatasetsConfig(**DATASETS), data=data,
                       tokenizer=corpus_dir / "runs/tokenizer", out=project / "x")
