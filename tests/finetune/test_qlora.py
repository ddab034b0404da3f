"""QLoRA on CPU for real (bitsandbytes 4-bit runs on x86): the LLM loads NF4 through transformers, peft wraps it
with its 4-bit LoRA class, training moves only the adapter and the projector, and the export merges the adapter
into a full-precision copy of the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from nvila_model.checkpoint import load_checkpoint
from nvila_model.finetune import modes
from nvila_model.finetune.config import FinetuneConfig, LoraSettings
from nvila_model.finetune.memory import model_state_bytes
from nvila_model.finetune.run import run_finetune

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def qlora_model(checkpoint: Path) -> nn.Module:
    model, _ = load_checkpoint(checkpoint, device=None)
    model.language_model = modes.load_llm_4bit(checkpoint, model.config.text_config, torch.device("cpu"))
    return model


def test_llm_loads_in_4bit_and_peft_wraps_it_with_its_4bit_lora(tiny_checkpoint: Path) -> None:
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    model = qlora_model(tiny_checkpoint)
    layer = model.language_model.model.layers[0]
    assert all(isinstance(layer.get_submodule(f"{p}.{n}"), bnb.nn.Linear4bit)
               for p, names in (("self_attn", DECODER_LINEARS[:4]), ("mlp", DECODER_LINEARS[4:])) for n in names)
    assert type(model.language_model.lm_head) is nn.Linear and model.language_model.is_loaded_in_4bit
    fp32_bytes = model_state_bytes(load_checkpoint(tiny_checkpoint, device=None)[0].requires_grad_(False))
    assert model_state_bytes(model.requires_grad_(False)) < fp32_bytes
    modes.apply_mode(model, FinetuneConfig(mode="qlora", lora=LoraSettings(r=8)))
    wrapped = {n.rsplit(".", 1)[-1]: type(m) for n, m in model.language_model.named_modules() if hasattr(m, "lora_A")}
    assert set(wrapped) == set(DECODER_LINEARS) and set(wrapped.values()) == {LoraLinear4bit}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    with pytest.raises(ValueError, match="full-precision copy of the base"):
        modes.merge_lora(model)


def test_qlora_needs_a_4bit_llm_and_bitsandbytes(tiny_model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="needs the LLM loaded in 4 bit"):
        modes.apply_mode(tiny_model, FinetuneConfig(mode="qlora"))
    assert modes.qlora_refusal() is None
    real_find_spec = modes.importlib.util.find_spec
    monkeypatch.setattr(modes.importlib.util, "find_spec", lambda n: None if n == "bitsandbytes" else real_find_spec(n))
    assert "pip install 'nvila-pipeline[qlora]'" in modes.qlora_refusal()


def test_qlora_stage_merges_the_adapter_into_the_fp32_base(tiny_checkpoint: Path, tiny_data: Path,
                                                           tmp_path: Path) -> None:
    from peft import PeftModel

    cfg = FinetuneConfig(mode="qlora", batch_size=2, max_steps=3, lr=5e-3, logging_steps=1, num_threads=1,
                         precision="fp32", lora=LoraSettings(r=8, alpha=16, dropout=0.0))
    out = run_finetune(cfg, tiny_checkpoint, tiny_data, tmp_path / "ft")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["llm"] == "qlora" and meta["steps"] == 3 and meta["llm_base"].startswith("bitsandbytes nf4")
    before, after = load_file(str(tiny_checkpoint / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after) and all(after[k].dtype == torch.float32 for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("projector."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_tower."))
    linears = [k for k in before if k.startswith("language_model.model.layers.") and k.endswith("proj.weight")]
    assert all(not torch.equal(before[k], after[k]) for k in linears)  # the adapter was trained and merged
    # merged = fp32 base + the saved adapter's delta: the same as the fp32 base running the adapter unmerged
    base, _ = load_checkpoint(tiny_checkpoint, "cpu")
    base.language_model = PeftModel.from_pretrained(base.language_model, str(out / "adapter"))
    base.projector.load_state_dict({k.split(".", 1)[1]: v for k, v in after.items() if k.startswith("projector.")})
    merged, _ = load_checkpoint(out, "cpu")
    ids = torch.tensor([[1, 5, 6, 7, 2, 9, 11]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, base(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
