"""The autoawq adapter: calibration blocks, group-size and clip checks, and AWQ of a small Qwen2 LM."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from nvila_model.quant import awq_adapter


def small_lm(hidden: int = 128) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).eval()


def test_calibration_blocks_have_exact_length() -> None:
    texts = [list(range(10)), list(range(100, 125)), list(range(7))]
    blocks = awq_adapter.calibration_blocks(texts, num_samples=2, seq_len=16)
    assert [len(b) for b in blocks] == [16, 16]  # 35 tokens of the first two texts -> two full blocks
    assert blocks[0] == list(range(10)) + list(range(100, 106))
    assert awq_adapter.calibration_blocks(texts, 3, seq_len=512) == [texts[0] + texts[1] + texts[2]]
    with pytest.raises(ValueError, match="at least 8 tokens"):
        awq_adapter.calibration_blocks([[1, 2]], 1, 16)


def test_group_size_and_clip_checks() -> None:
    lm = small_lm(hidden=96)  # in_features 96 / 192: groups of 64 do not fit; k_proj out 48: no clip search
    with pytest.raises(ValueError, match="group_size 64 does not divide"):
        awq_adapter.check_quantizable(lm, 64)
    awq_adapter.check_quantizable(lm, 32)
    assert not awq_adapter.clip_allowed(lm, "auto")
    with pytest.raises(ValueError, match="multiple of 64"):
        awq_adapter.clip_allowed(lm, "true")
    assert awq_adapter.clip_allowed(small_lm(128), "auto")
    with pytest.raises(ValueError, match="supports Qwen2ForCausalLM"):
        awq_adapter.check_quantizable(nn.Linear(4, 4), 32)


def test_awq_replaces_decoder_linears_only_and_stays_close() -> None:
    torch.set_num_threads(1)
    lm = small_lm()
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = lm(ids).logits
    head = lm.lm_head.weight.clone()
    tokens = [torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(4)]
    meta = awq_adapter.quantize_lm(lm, tokens, w_bit=4, group_size=32, zero_point=True, num_calib_samples=4,
                                   calib_seq_len=64, apply_clip="false")
    assert len(meta["quantized_layers"]) == 7 and not awq_adapter.decoder_linears(lm)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"):
        assert awq_adapter.is_awq_linear(lm.model.layers[0].get_submodule(name))
    assert type(lm.lm_head) is nn.Linear and torch.equal(lm.lm_head.weight, head)
    with torch.no_grad():
        out = lm(ids).logits
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.2, rel  # 4-bit groups of 32 on a random LM
