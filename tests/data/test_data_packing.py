"""Packing: row layout, and per-sample losses of packed and padded batches equal the samples run one by one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nvila_model.data.collate import PackingCollator, PaddingCollator, model_inputs, per_sample_losses
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import read_manifest, record_kind


def _fake(n: int, tag: int, media: int = 0) -> dict:
    return {"input_ids": torch.full((n,), tag), "labels": torch.full((n,), tag), "id": f"s{tag}",
            "pixel_values": torch.full((media, 3, 2, 2), float(tag)), "media_layout": torch.full((media, 4), tag)}


def test_packed_batch_layout() -> None:
    samples = [_fake(5, 1, media=1), None, _fake(3, 2), _fake(6, 3, media=2), _fake(2, 4, media=1)]
    batch = PackingCollator()(samples)
    assert batch["attention_mask"] is None and batch["input_ids"].shape == (1, 16)  # one row, no padding
    assert batch["ids"] == ["s1", "s2", "s3", "s4"]
    assert batch["position_ids"].tolist() == [[*range(5), *range(3), *range(6), *range(2)]]
    assert batch["labels"][0, :8].tolist() == [-100, 1, 1, 1, 1, -100, 2, 2]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0, 3.0, 4.0]
    assert batch["media_layout"][:, 0].tolist() == [1, 3, 3, 4]
    assert batch["sample_starts"].tolist() == [0, 5, 8, 14] and batch["sample_lengths"].tolist() == [5, 3, 6, 2]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 5, 8, 14, 16]
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["max_length_q"] == batch["max_length_k"] == 6
    padded = PaddingCollator(pad_id=0)(samples)
    assert padded["input_ids"].shape == (4, 6) and padded["attention_mask"].sum(1).tolist() == [5, 3, 6, 2]
    assert padded["labels"][1].tolist() == [2, 2, 2, -100, -100, -100]


def test_packed_row_is_what_transformers_recognises_as_packed() -> None:
    """flash-attn: transformers infers varlen boundaries from position_ids only for a one-row batch, and takes
    explicit ones in DataCollatorWithFlattening's convention; both must equal the samples' boundaries."""
    from transformers import DataCollatorWithFlattening
    from transformers.masking_utils import find_packed_sequence_indices
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    samples = [_fake(5, 1, media=1), _fake(3, 2), _fake(6, 3, media=2)]
    batch = PackingCollator()(samples)
    position_ids = batch["position_ids"]
    assert batch["input_ids"].shape == (1, 14) and _is_packed_sequence(position_ids, batch_size=1)
    assert find_packed_sequence_indices(position_ids).tolist() == [[0] * 5 + [1] * 3 + [2] * 6]
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(position_ids)
    assert cu_q.tolist() == cu_k.tolist() == batch["cu_seq_lens_q"].tolist() == [0, 5, 8, 14]
    assert int(max_q) == int(max_k) == batch["max_length_q"] == batch["max_length_k"] == 6
    reference = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": s["input_ids"].tolist(), "labels": s["labels"].tolist()} for s in samples])
    assert reference["position_ids"].tolist() == position_ids.tolist()
    assert reference["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_q"].tolist()
    assert reference["input_ids"].tolist() == batch["input_ids"].tolist()


@pytest.fixture()
def own_model(tiny_config):
    """A tiny model with its own config: these tests switch its attention implementation."""
    from nvila_model.modeling import NVILAForConditionalGeneration

    torch.manual_seed(0)
    return NVILAForConditionalGeneration(copy.deepcopy(tiny_config)).eval()


@pytest.fixture()
def mixed_samples(corpus: Path, processor) -> list[dict]:
    records = read_manifest(corpus / "val.jsonl")
    picked = [next(r for r in records if record_kind(r) == k) for k in ("image", "video", "images")]
    text = {"id": "t", "conversations": [{"from": "human", "value": "Say dog."}, {"from": "gpt", "value": "dog"}]}
    ds = LlavaDataset([*picked, text, picked[0]], corpus, processor)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("attention", ["sdpa_varlen", "sdpa"])
def test_packed_and_padded_losses_equal_one_by_one(mixed_samples: list[dict], own_model, attention: str) -> None:
    """sdpa_varlen keeps the samples of a packed row apart by its boundaries; plain sdpa by the block-diagonal mask
    transformers builds from the position ids."""
    torch.manual_seed(0)
    own_model.set_attn_implementation(attention)
    assert own_model.config.text_config._attn_implementation == attention
    with torch.no_grad():
        alone = torch.cat([per_sample_losses(own_model(**model_inputs(b)).logits, b)
                           for b in (PaddingCollator(0)([s]) for s in mixed_samples)])
        packed = PackingCollator()(mixed_samples)
        packed_losses = per_sample_losses(own_model(**model_inputs(packed)).logits, packed)
        padded = PaddingCollator(0)(mixed_samples)
        padded_losses = per_sample_losses(own_model(**model_inputs(padded)).logits, padded)
    torch.testing.assert_close(packed_losses, alone, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(padded_losses, alone, atol=2e-5, rtol=1e-5)
    assert alone.isfinite().all() and alone.std() > 0


def test_sdpa_varlen_runs_one_causal_call_per_sample_and_builds_no_mask(mixed_samples: list[dict], own_model,
                                                                        monkeypatch) -> None:
    """The training forward on a packed row: each LLM layer attends once per sample, on that sample's slice, with
    no mask built; its loss and gradients equal those of the masked sdpa path."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    from nvila_model import attention

    batch = model_inputs(PackingCollator()(mixed_samples))

    def loss_and_grads(implementation: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        own_model.set_attn_implementation(implementation)
        own_model.train().zero_grad()
        loss = own_model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in own_model.named_parameters() if p.grad is not None}

    masked_loss, masked_grads = loss_and_grads("sdpa")
    lengths: list[int] = []
    sdpa = attention.sdpa_attention_forward

    def recording(module, query, key, value, attention_mask, **kwargs):
        if query.shape[0] == 1:  # the LLM's calls (the vision tower's batch holds every tile)
            assert attention_mask is None and kwargs["is_causal"]
            lengths.append(query.shape[2])
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    def no_mask(*args, **kwargs):
        raise AssertionError("a mask was built for a packed row")

    monkeypatch.setattr(attention, "sdpa_attention_forward", recording)
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, attention.NAME, no_mask)
    varlen_loss, varlen_grads = loss_and_grads(attention.NAME)
    sample_lengths = [s["input_ids"].shape[0] for s in mixed_samples]
    assert lengths == sample_lengths * own_model.config.text_config.num_hidden_layers
    torch.testing.assert_close(varlen_loss, masked_loss, atol=1e-5, rtol=1e-5)
    assert varlen_grads.keys() == masked_grads.keys() and len(varlen_grads) > 10
    for name, grad in masked_grads.items():
        torch.testing.assert_close(varlen_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def reference_varlen(calls: list):
    """flash_attn_varlen_func's contract on CPU (per-segment causal SDPA), recording the boundaries it is given."""
    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               deterministic=False):
        calls.append(cu_seqlens_q.tolist())
        out = torch.empty_like(q)
        bounds = cu_seqlens_q.tolist()
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            q_HLD, k_HLD, v_HLD = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
            out[start:end] = F.scaled_dot_product_attention(q_HLD, k_HLD, v_HLD, is_causal=causal, scale=softmax_scale,
                                                            enable_gqa=True)[0].transpose(0, 1)
        return out

    def flash_attn_func(*args, **kwargs):
        raise AssertionError("a packed batch reached the plain flash kernel: attention would cross samples")

    return flash_attn_func, flash_attn_varlen_func


def test_flash_varlen_row_gives_the_per_sample_losses(mixed_samples: list[dict], tiny_model, monkeypatch) -> None:
    """The model's own flash_attention_2 path with the flash layout gives each sample's one-by-one SDPA loss (the
    kernel is a CPU reference of flash_attn_varlen_func; the GPU run is in bench/gpu_check.py)."""
    from transformers import modeling_flash_attention_utils as fa_utils

    with torch.no_grad():
        alone = torch.cat([per_sample_losses(tiny_model(**model_inputs(b)).logits, b)
                           for b in (PaddingCollator(0)([s]) for s in mixed_samples)])
    calls: list = []
    flash, varlen = reference_varlen(calls)
    monkeypatch.setattr(fa_utils, "_lazy_imports", lambda *a, **k: (flash, varlen, None, fa_utils._pad_input,
                                                                     fa_utils._unpad_input))
    monkeypatch.setattr(fa_utils, "_loaded_implementation", None)
    text_config = tiny_model.config.text_config
    assert tiny_model.language_model.config is text_config
    monkeypatch.setattr(text_config, "_attn_implementation_internal", "flash_attention_2")
    batch = PackingCollator()(mixed_samples)
    with torch.no_grad():
        packed = per_sample_losses(tiny_model(**model_inputs(batch)).logits, batch)
    assert calls and all(c == batch["cu_seq_lens_q"].tolist() for c in calls)
    assert len(calls) == text_config.num_hidden_layers and len(calls[0]) == len(mixed_samples) + 1
    order = [[s["id"] for s in mixed_samples].index(i) for i in batch["ids"]]
    torch.testing.assert_close(packed, alone[order], atol=2e-5, rtol=1e-5)
