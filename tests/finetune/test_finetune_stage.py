"""The fine-tune stage end to end through the training package's NVILATrainer on the tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nvila_model.finetune.config import FinetuneConfig
from nvila_model.finetune.run import run_finetune
from nvila_model.modeling import NVILAForConditionalGeneration


def small_run(mode: str, **changes) -> FinetuneConfig:
    values = dict(mode=mode, batch_size=2, max_steps=3, lr=1e-3, logging_steps=1, num_threads=1, precision="fp32")
    return FinetuneConfig(**{**values, **changes})


def test_ln_lora_stage_exports_a_merged_checkpoint(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = run_finetune(small_run("ln_lora"), tiny_checkpoint, tiny_data, tmp_path / "ft")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 3 and meta["lora_merged"] and meta["peak_memory_bytes"] >= 0
    assert meta["trainable_params"]["vision_tower"] > 0 and meta["trainable_params"]["language_model"] > 0
    assert meta["module_lrs"]["vision_tower"] == pytest.approx(1e-4)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "manifest.json").is_file()
    before, after = load_file(str(tiny_checkpoint / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after)  # a plain NVILA checkpoint again: no LoRA keys left
    frozen = [k for k in before if k.startswith("vision_tower.") and "layer_norm" not in k and "layernorm" not in k]
    frozen += ["language_model.lm_head.weight", "language_model.model.embed_tokens.weight"]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["language_model.model.layers.0.self_attn.q_proj.weight"],
                           after["language_model.model.layers.0.self_attn.q_proj.weight"])  # LoRA merged in
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("projector."))
    model = NVILAForConditionalGeneration.from_pretrained(str(out))
    assert model.language_model.model.layers[0].self_attn.q_proj.weight.shape[0] == 128


def test_loss_falls_when_overfitting(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = run_finetune(small_run("full", max_steps=12, batch_size=4), tiny_checkpoint, tiny_data, tmp_path / "ft")
    losses = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert losses[-1] < losses[0]


def test_refusals(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an NVILA checkpoint"):
        run_finetune(small_run("lora"), tmp_path, tiny_data, tmp_path / "ft")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "conversations": "hello"}) + "\n")
    with pytest.raises(ValueError, match="no record passes the LLaVA schema checks"):
        run_finetune(small_run("lora"), tiny_checkpoint, bad, tmp_path / "ft")
