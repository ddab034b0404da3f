"""An NVILA checkpoint as a DeltaLoss scorer: decode media, encode with its processor, teacher-forced forward."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvila_model.checkpoint import load_checkpoint
from nvila_model.data.collate import PackingCollator, model_inputs, sample_index
from nvila_model.data.loader import LOAD_ERRORS, load_media
from nvila_model.deltaloss.formula import supervised_mean_logprob
from nvila_model.device import resolve_device
from nvila_model.train.precision import resolve_attention

log = logging.getLogger(__name__)


class CheckpointScorer:
    """Mean answer log-likelihood under one NVILA checkpoint directory (weights + processor files).

    A record whose media cannot be decoded, or that does not encode, gets NaN with K = 0 (logged): it keeps its
    one row in the scores table and is ranked last by pruning, like the trainer which skips it.
    """

    def __init__(self, checkpoint: str | Path, media_root: str | Path | None, micro_batch_size: int = 8,
                 dtype: str = "float32", device: str = "auto") -> None:
        self.model, self.processor = load_checkpoint(checkpoint, resolve_device(device, "score.device"))
        self.device = next(self.model.parameters()).device
        self.media_root = media_root
        self.micro_batch_size = micro_batch_size
        self.autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        # flash-attn's varlen kernel computes in half precision only: it serves bf16 scoring on a GPU that has it
        self.attention = (resolve_attention("auto") if self.device.type == "cuda" and self.autocast_dtype
                          else "sdpa_varlen")
        self.model.set_attn_implementation(self.attention)
        self.collate = PackingCollator()

    def encode(self, record: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The processor's sample dict for `record`, or None when its media or text cannot be encoded."""
        try:
            images, video = load_media(record, self.media_root, self.processor.video_frame_indices)
            return self.processor.encode(record["conversations"], images=images or None, video=video)
        except (*LOAD_ERRORS, KeyError) as exc:
            log.warning("cannot score record %s: %s: %s", record.get("id"), type(exc).__name__, exc)
            return None

    @torch.inference_mode()
    def mean_logprobs(self, records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Teacher forcing on each record's own answer tokens, `micro_batch_size` records per forward pass.

        Each micro-batch is packed as the training stages pack it (one row, no padding, attention within each
        sample from its boundaries), and the LM head runs on the answer positions only: the same numbers as the
        model's full logits one record at a time, for less.
        """
        means = np.full(len(records), np.nan)
        counts = np.zeros(len(records), dtype=np.int64)
        encoded = [(i, s) for i, s in enumerate(self.encode(r) for r in records) if s is not None]
        for start in range(0, len(encoded), self.micro_batch_size):
            chunk = encoded[start : start + self.micro_batch_size]
            batch = self.collate([s for _, s in chunk])
            inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in model_inputs(batch).items()}
            autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                        else nullcontext())
            with autocast:
                embeds_1TD = self.model.embed(inputs.pop("input_ids"), inputs.pop("pixel_values"),
                                              inputs.pop("media_layout"))
                logits_SV, targets_S, supervised_1T = self.model.supervised_logits(
                    embeds_1TD, inputs.pop("attention_mask"), inputs.pop("position_ids"), inputs.pop("labels"),
                    **inputs)
            # which record each position of the row belongs to: each record's supervised positions, one row each
            record_T = sample_index(batch).to(self.device)
            supervised_NT = (record_T[None] == torch.arange(len(chunk), device=self.device)[:, None]) & supervised_1T
            mean_N, num_N = supervised_mean_logprob(logits_SV, targets_S, supervised_NT)
            for (i, _), mean, num in zip(chunk, mean_N.cpu().tolist(), num_N.cpu().tolist(), strict=True):
                means[i], counts[i] = mean, num
        return means, counts
