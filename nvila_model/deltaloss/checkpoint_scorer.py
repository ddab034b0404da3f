"""An NVILA checkpoint as a DeltaLoss scorer: decode media, encode with its processor, teacher-forced forward."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvila_model.data.loader import LOAD_ERRORS, load_media
from nvila_model.deltaloss.formula import mean_answer_logprob

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available (e.g. a Ray actor given a GPU), else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("score.device is 'cuda' but no GPU is visible (set score.ray.gpus_per_actor > 0)")
    return torch.device(device)


class CheckpointScorer:
    """Mean answer log-likelihood under one NVILA checkpoint directory (weights + processor files).

    A record whose media cannot be decoded, or that does not encode, gets NaN with K = 0 (logged): it keeps its
    one row in the scores table and is ranked last by pruning, like the trainer which skips it.
    """

    def __init__(self, checkpoint: str | Path, media_root: str | Path | None, micro_batch_size: int = 8,
                 dtype: str = "float32", device: str = "auto") -> None:
        from nvila_model.modeling import NVILAForConditionalGeneration
        from nvila_model.processor import NVILAProcessor

        checkpoint = Path(checkpoint)
        if not (checkpoint / "config.json").is_file():
            raise ValueError(f"{checkpoint}: not a checkpoint directory (no config.json)")
        self.device = resolve_device(device)
        self.model = NVILAForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32)
        self.model.to(self.device).eval()
        self.processor = NVILAProcessor.from_pretrained(checkpoint)
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
        """Teacher forcing on each record's own answer tokens, `micro_batch_size` records per forward pass."""
        means = np.full(len(records), np.nan)
        counts = np.zeros(len(records), dtype=np.int64)
        encoded = [(i, s) for i, s in enumerate(self.encode(r) for r in records) if s is not None]
        for start in range(0, len(encoded), self.micro_batch_size):
            chunk = encoded[start : start + self.micro_batch_size]
            batch = self.processor.pad([s for _, s in chunk])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            labels_BL = batch.pop("labels")
            autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                        else nullcontext())
            with autocast:
                logits_BLV = self.model(**batch).logits
            mean_B, num_B = mean_answer_logprob(logits_BLV, labels_BL)
            for (i, _), mean, num in zip(chunk, mean_B.cpu().tolist(), num_B.cpu().tolist(), strict=True):
                means[i], counts[i] = mean, num
        return means, counts
