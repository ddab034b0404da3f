"""Fine-tuning modes train exactly the parameters they name, with the configured LR groups; LoRA merge is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nvila_model.finetune.config import FinetuneConfig, LoraSettings
from nvila_model.finetune.memory import model_state_bytes
from nvila_model.finetune.modes import apply_mode, merge_lora, module_lrs, vision_layernorm_params
from nvila_model.train.hf_trainer import module_param_groups

TOKENS = torch.tensor([[1, 5, 6, 7, 2, 1, 8, 9, 10, 11, 2]])


def batch_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A text + one-tile-image batch: every module (vision tower, projector, LLM) gets gradients."""
    cfg = model.config
    ids = torch.cat([TOKENS[:, :3], torch.full((1, cfg.tokens_per_tile), cfg.image_token_id), TOKENS[:, 3:]], 1)
    return {"input_ids": ids, "labels": ids.clone(), "pixel_values": torch.randn(1, 3, cfg.tile_size, cfg.tile_size),
            "media_layout": torch.tensor([[1, 1, 1, 0]])}


def expected_trainable(name: str, mode: str, ln_names: set[str]) -> bool:
    if name.startswith("projector.") or mode == "full":
        return True
    if "lora_" in name:
        return mode in ("lora", "ln_lora")
    return mode in ("ln", "ln_lora") and name in ln_names


@pytest.mark.parametrize("mode", ["full", "ln", "lora", "ln_lora"])
def test_mode_trains_exactly_its_parameters(tiny_model: nn.Module, mode: str) -> None:
    cfg = FinetuneConfig(mode=mode, lr=1e-2)
    ln_names = set(vision_layernorm_params(tiny_model))
    apply_mode(tiny_model, cfg)
    named = dict(tiny_model.named_parameters())
    for name, param in named.items():
        assert param.requires_grad == expected_trainable(name, mode, ln_names), name
    before = {name: p.detach().clone() for name, p in named.items()}
    optimizer = torch.optim.AdamW(module_param_groups(tiny_model, module_lrs(tiny_model, cfg), 0.0))
    tiny_model.train()
    for _ in range(2):  # two steps: LoRA A only moves once B is non-zero
        optimizer.zero_grad()
        tiny_model(**batch_of(tiny_model)).loss.backward()
        optimizer.step()
    changed = {name for name, p in named.items() if not torch.equal(p, before[name])}
    frozen = {name for name, p in named.items() if not p.requires_grad}
    assert not changed & frozen  # every frozen parameter is bit-identical
    with_grad = {name for name, p in named.items() if p.requires_grad and p.grad is not None and p.grad.any()}
    assert with_grad and with_grad <= changed
    assert any(n.startswith("projector.") for n in changed)
    assert any(n in ln_names for n in changed) == (mode in ("full", "ln", "ln_lora"))
    assert any("lora_" in n for n in changed) == (mode in ("lora", "ln_lora"))


def test_lr_groups_follow_the_config(tiny_model: nn.Module) -> None:
    cfg = FinetuneConfig(mode="ln_lora", lr=3e-4, vision_lr_ratio=0.05)
    apply_mode(tiny_model, cfg)
    lrs = module_lrs(tiny_model, cfg)
    assert lrs == pytest.approx({"vision_tower": 1.5e-5, "projector": 3e-4, "language_model": 3e-4})
    groups = module_param_groups(tiny_model, lrs, 0.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in tiny_model.parameters() if p.requires_grad)
    vision_group = next(g for g in groups if g["name"] == "vision_tower")
    assert vision_group["lr"] == pytest.approx(1.5e-5)
    assert {id(p) for p in vision_group["params"]} == {id(p) for p in vision_layernorm_params(tiny_model).values()}


def test_lora_mode_has_no_vision_group(tiny_model: nn.Module) -> None:
    cfg = FinetuneConfig(mode="lora")
    apply_mode(tiny_model, cfg)
    assert set(module_lrs(tiny_model, cfg)) == {"projector", "language_model"}


def test_lora_targets_every_llm_linear_but_lm_head(tiny_model: nn.Module) -> None:
    apply_mode(tiny_model, FinetuneConfig(mode="lora"))
    lm = tiny_model.language_model
    config = lm.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (64, 16, 0.05)
    wrapped = {name.rsplit(".", 1)[-1] for name, mod in lm.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not hasattr(lm.get_output_embeddings(), "lora_A")


def test_lora_merge_gives_the_same_logits(tiny_model: nn.Module) -> None:
    apply_mode(tiny_model, FinetuneConfig(mode="ln_lora", lora=LoraSettings(r=8, alpha=16, dropout=0.05)))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in tiny_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # B starts at zero: make the adapter matter
    tiny_model.eval()
    batch = batch_of(tiny_model)
    with torch.no_grad():
        unmerged = tiny_model(**batch).logits
        with tiny_model.language_model.disable_adapter():
            base = tiny_model(**batch).logits
        merge_lora(tiny_model)
        merged = tiny_model(**batch).logits
    assert type(tiny_model.language_model).__name__ == "Qwen2ForCausalLM"
    assert not any("lora_" in n for n, _ in tiny_model.named_parameters())
    assert not torch.allclose(base, unmerged, atol=1e-3)  # the adapter matters, else this test proves nothing
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="finetune.mode 'dora' unknown"):
        FinetuneConfig(mode="dora")
    with pytest.raises(ValueError, match="vision_lr_ratio"):
        FinetuneConfig(vision_lr_ratio=2.0)


def test_model_state_bytes_counts_weights_grads_and_adam(tiny_model: nn.Module) -> None:
    total = sum(p.numel() for p in tiny_model.parameters())
    apply_mode(tiny_model, FinetuneConfig(mode="full"))
    assert model_state_bytes(tiny_model) == 16 * total
    apply_mode(tiny_model, FinetuneConfig(mode="ln"))
    trainable = sum(p.numel() for p in tiny_model.parameters() if p.requires_grad)
    assert model_state_bytes(tiny_model) == 4 * total + 12 * trainable
