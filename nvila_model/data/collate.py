"""Batch collators: right padding with an attention mask, and sequence packing with per-sample position ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nvila_model.config import IGNORE_INDEX

FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")  # transformers' FlashAttentionKwargs


def _present(samples: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Drop the `None`s that `LlavaDataset` yields for records it could not load."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise ValueError(f"all {len(samples)} samples of this batch failed to load (see the warnings above)")
    return kept


def _media(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "media_layout": torch.cat([s["media_layout"] for s in samples]).reshape(-1, 4)}


@dataclass
class PaddingCollator:
    """One sample per row, padded on the right: pad id in `input_ids`, -100 in `labels`, 0 in `attention_mask`."""

    pad_id: int

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        samples = _present(samples)
        longest = max(s["input_ids"].shape[0] for s in samples)
        input_ids_BL = torch.full((len(samples), longest), self.pad_id, dtype=torch.long)
        labels_BL = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask_BL = torch.zeros((len(samples), longest), dtype=torch.long)
        for b, s in enumerate(samples):
            n = s["input_ids"].shape[0]
            input_ids_BL[b, :n], labels_BL[b, :n], attention_mask_BL[b, :n] = s["input_ids"], s["labels"], 1
        return {"input_ids": input_ids_BL, "labels": labels_BL, "attention_mask": attention_mask_BL,
                **_media(samples), "sample_lengths": attention_mask_BL.sum(1),
                "sample_starts": torch.arange(len(samples)) * longest, "ids": [s.get("id") for s in samples]}


def pack_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of sample lengths into rows of at most `max_tokens` (a longer sample
    gets a row of its own); rows are ordered by their first sample and keep samples in input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_tokens - lengths[i])
    return sorted((sorted(r) for r in rows), key=lambda r: r[0])


@dataclass
class PackingCollator:
    """Pack samples into rows of at most `max_tokens` tokens, or (`max_tokens=None`) into ONE row per micro-batch.

    A micro-batch holding a sample longer than `max_tokens` packs into rows as long as that sample: every row is
    padded to the widest anyway, so filling rows up to it costs no wider attention and saves rows. (With one row
    per oversized sample, Dynamic-S2 without token compression padded 27% of its slots; 9% this way,
    `bench/packing.py --uncompressed`.)

    Returns `input_ids`, `labels`, `position_ids` [R, L] (positions restart at 0 for every sample and for the
    trailing padding), `attention_mask=None`, media concatenated in the order samples appear in the rows,
    `sample_lengths`, `sample_starts` (flat offsets) [N] and `ids` in that order.

    Attention never crosses samples on either path transformers takes:
    - SDPA / eager: the block-diagonal mask comes from `position_ids` (`masking_utils.find_packed_sequence_indices`)
      for any number of rows. On CPU that mask is dense, so attention costs grow with the square of the row length:
      keep `max_tokens` near a few sample lengths there.
    - flash-attn varlen: transformers reads the boundaries from `position_ids` only when the batch has ONE row
      (`modeling_flash_attention_utils._is_packed_sequence`); with several rows it would run the plain kernel across
      samples. So this mode uses `max_tokens=None` and `flash_attn_kwargs=True`, which also returns the boundaries
      as transformers' `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` does: `cu_seq_lens_q/k` int32
      [N + 1] and `max_length_q/k`, passed through the model to the varlen kernel.
    """

    pad_id: int
    max_tokens: int | None
    flash_attn_kwargs: bool = False

    def rows(self, lengths: list[int]) -> list[list[int]]:
        """The samples (indices) of each row."""
        if not self.max_tokens:
            return [list(range(len(lengths)))]
        return pack_rows(lengths, max(self.max_tokens, *lengths))

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        samples = _present(samples)
        lengths = [s["input_ids"].shape[0] for s in samples]
        rows = self.rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        input_ids_RL = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels_RL = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids_RL = torch.zeros((len(rows), width), dtype=torch.long)
        order, segments, starts = [], [], []
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = lengths[i]
                input_ids_RL[r, start:start + n] = samples[i]["input_ids"]
                labels_RL[r, start:start + n] = samples[i]["labels"]
                labels_RL[r, start] = IGNORE_INDEX  # never a target across a sample boundary
                position_ids_RL[r, start:start + n] = torch.arange(n)
                order.append(i)
                starts.append(r * width + start)
                segments.append(n)
                start += n
            if start < width:
                position_ids_RL[r, start:] = torch.arange(width - start)
                segments.append(width - start)
        ordered = [samples[i] for i in order]
        batch = {"input_ids": input_ids_RL, "labels": labels_RL, "position_ids": position_ids_RL,
                 "attention_mask": None, **_media(ordered), "sample_lengths": torch.tensor([lengths[i] for i in order]),
                 "sample_starts": torch.tensor(starts), "ids": [s.get("id") for s in ordered]}
        if self.flash_attn_kwargs:
            cu_seq_lens = F.pad(torch.tensor(segments, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
            batch |= {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
                      "max_length_q": max(segments), "max_length_k": max(segments)}
        return batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of a collated batch that `NVILAForConditionalGeneration.forward` takes."""
    keys = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values", "media_layout",
            *FLASH_KWARGS)
    return {k: batch[k] for k in keys if k in batch}


def per_sample_losses(logits_RLV: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample [N] of a packed or padded batch (samples in batch order).

    Targets are shifted within each sample only, so packed and one-by-one runs are comparable.
    """
    losses = []
    flat_logits, flat_labels = logits_RLV.reshape(-1, logits_RLV.shape[-1]), batch["labels"].reshape(-1)
    for start, n in zip(batch["sample_starts"].tolist(), batch["sample_lengths"].tolist(), strict=True):
        logits, labels = flat_logits[start:start + n - 1], flat_labels[start + 1:start + n]
        losses.append(F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX))
    return torch.stack(losses)
