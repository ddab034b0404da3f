"""Packing: row layout, and per-sample losses of packed and padded batches equal the samples run one by one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nvila_model.data.collate import PackingCollator, PaddingCollator, model_inputs, pack_rows, per_sample_losses
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import read_manifest, record_kind


def _fake(n: int, tag: int, media: int = 0) -> dict:
    return {"input_ids": torch.full((n,), tag), "labels": torch.full((n,), tag), "id": f"s{tag}",
            "pixel_values": torch.full((media, 3, 2, 2), float(tag)), "media_layout": torch.full((media, 4), tag)}


def test_pack_rows_respects_the_budget_and_keeps_order() -> None:
    rows = pack_rows([5, 3, 6, 2, 4], max_tokens=8)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 6, 2, 4][i] for i in r) <= 8 for r in rows) and len(rows) == 3
    assert all(r == sorted(r) for r in rows) and [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert pack_rows([12, 1], max_tokens=8) == [[0], [1]]  # an oversized sample gets its own row


def test_packed_batch_layout() -> None:
    samples = [_fake(5, 1, media=1), None, _fake(3, 2), _fake(6, 3, media=2), _fake(2, 4, media=1)]
    batch = PackingCollator(pad_id=0, max_tokens=8)(samples)
    assert batch["attention_mask"] is None and batch["input_ids"].shape == (2, 8)
    assert batch["ids"] == ["s1", "s2", "s3", "s4"]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1]]
    assert batch["labels"][0].tolist() == [-100, 1, 1, 1, 1, -100, 2, 2]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0, 3.0, 4.0]
    assert batch["media_layout"][:, 0].tolist() == [1, 3, 3, 4]
    assert "cu_seq_lens_q" not in batch  # boundaries are for the flash-attn layout only
    assert batch["sample_starts"].tolist() == [0, 5, 8, 14]
    padded = PaddingCollator(pad_id=0)(samples)
    assert padded["input_ids"].shape == (4, 6) and padded["attention_mask"].sum(1).tolist() == [5, 3, 6, 2]
    assert padded["labels"][1].tolist() == [2, 2, 2, -100, -100, -100]


def test_a_sample_over_the_budget_widens_every_row_of_its_batch_instead_of_taking_one_alone() -> None:
    """Rows are padded to the widest, so with a 12-token sample the others fill rows of 12, not rows of 8 padded."""
    batch = PackingCollator(pad_id=0, max_tokens=8)([_fake(12, 1), _fake(5, 2), _fake(6, 3), _fake(1, 4)])
    assert batch["input_ids"].shape == (2, 12)
    assert batch["position_ids"][1].tolist() == [*range(5), *range(6), 0]
    assert PackingCollator(pad_id=0, max_tokens=8)([_fake(5, 2), _fake(6, 3)])["input_ids"].shape == (2, 6)


def test_transformers_detects_packed_segments() -> None:
    from transformers.masking_utils import find_packed_sequence_indices

    position_ids = PackingCollator(pad_id=0, max_tokens=8)([_fake(5, 1), _fake(3, 2), _fake(6, 3)])["position_ids"]
    assert find_packed_sequence_indices(position_ids).tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0] * 6 + [1, 1]]


def test_flash_layout_is_one_row_that_transformers_recognises_as_packed() -> None:
    """The flash-attn path: transformers infers varlen boundaries from position_ids only for a one-row batch, and
    takes explicit ones in DataCollatorWithFlattening's convention; both must equal the samples' boundaries."""
    from transformers import DataCollatorWithFlattening
    from transformers.masking_utils import find_packed_sequence_indices
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    samples = [_fake(5, 1, media=1), _fake(3, 2), _fake(6, 3, media=2)]
    batch = PackingCollator(pad_id=0, max_tokens=None, flash_attn_kwargs=True)(samples)
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
    several_rows = PackingCollator(pad_id=0, max_tokens=8)(samples)["position_ids"]
    assert several_rows.shape[0] > 1 and not _is_packed_sequence(several_rows, batch_size=several_rows.shape[0])


@pytest.fixture()
def mixed_samples(corpus: Path, processor) -> list[dict]:
    records = read_manifest(corpus / "val.jsonl")
    picked = [next(r for r in records if record_kind(r) == k) for k in ("image", "video", "images")]
    text = {"id": "t", "conversations": [{"from": "human", "value": "Say dog."}, {"from": "gpt", "value": "dog"}]}
    ds = LlavaDataset([*picked, text, picked[0]], corpus, processor)
    return [ds[i] for i in range(len(ds))]


def test_packed_and_padded_losses_equal_one_by_one(mixed_samples: list[dict], tiny_model) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        alone = torch.cat([per_sample_losses(tiny_model(**model_inputs(b)).logits, b)
                           for b in (PaddingCollator(0)([s]) for s in mixed_samples)])
        budget = max(s["input_ids"].shape[0] for s in mixed_samples) + 40
        packed = PackingCollator(pad_id=0, max_tokens=budget)(mixed_samples)
        assert packed["input_ids"].shape[0] < len(mixed_samples)  # several samples really share a row
        packed_losses = per_sample_losses(tiny_model(**model_inputs(packed)).logits, packed)
        padded = PaddingCollator(0)(mixed_samples)
        padded_losses = per_sample_losses(tiny_model(**model_inputs(padded)).logits, padded)
    order = [[s["id"] for s in mixed_samples].index(i) for i in packed["ids"]]
    torch.testing.assert_close(packed_losses, alone[order], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(padded_losses, alone, atol=2e-5, rtol=1e-5)
    assert alone.isfinite().all() and alone.std() > 0


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
    batch = PackingCollator(pad_id=0, max_tokens=None, flash_attn_kwargs=True)(mixed_samples)
    with torch.no_grad():
        packed = per_sample_losses(tiny_model(**model_inputs(batch)).logits, batch)
    assert calls and all(c == batch["cu_seq_lens_q"].tolist() for c in calls)
    assert len(calls) == text_config.num_hidden_layers and len(calls[0]) == len(mixed_samples) + 1
    order = [[s["id"] for s in mixed_samples].index(i) for i in batch["ids"]]
    torch.testing.assert_close(packed, alone[order], atol=2e-5, rtol=1e-5)
