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
from nvila_model.data.loader import LOAD_ERRORS, load_media
from nvila_model.deltaloss.formula import supervised_mean_logprob
from nvila_model.device import resolve_device

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

        The records are batched by length (padding is wasted work) and the LM head runs on the answer positions
        only: the same numbers as the model's full logits, for less.
        """
        means = np.full(len(records), np.nan)
        counts = np.zeros(len(records), dtype=np.int64)
        encoded = [(i, s) for i, s in enumerate(self.encode(r) for r in records) if s is not None]
        encoded.sort(key=lambda item: item[1]["input_ids"].shape[0])
        for start in range(0, len(encoded), self.micro_batch_size):
            chunk = encoded[start : start + self.micro_batch_size]
            batch = self.processor.pad([s for _, s in chunk])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                        else nullcontext())
            with autocast:
                embeds_BLD = self.model.embed(batch["input_ids"], batch["pixel_values"], batch["media_layout"])
                logits_TV, targets_T, supervised_BL = self.model.supervised_logits(
                    embeds_BLD, batch["attention_mask"], None, batch["labels"])
            mean_B, num_B = supervised_mean_logprob(logits_TV, targets_T, supervised_BL)
            for (i, _), mean, num in zip(chunk, mean_B.cpu().tolist(), num_B.cpu().tolist(), strict=True):
                means[i], counts[i] = mean, num
        return means, counts
