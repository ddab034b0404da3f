"""Fixed toy scorers with known log-probabilities: a bigram table turned into logits, scored by the real formula."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvila_model.deltaloss.formula import IGNORE_INDEX, mean_answer_logprob


class BigramScorer:
    """p(next | current) = probs[current, next]; records carry `tokens` and `num_prompt` (prompt length)."""

    def __init__(self, probs: list[list[float]], delay_s: float = 0.0) -> None:
        self.logprob_VV = torch.tensor(probs, dtype=torch.float64).log()
        self.delay_s = delay_s

    def mean_logprobs(self, records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        _maybe_fail(records)
        _wait_for_gate(records)
        if self.delay_s:
            time.sleep(self.delay_s)
        max_len = max(len(r["tokens"]) for r in records)
        input_ids_BL = torch.zeros(len(records), max_len, dtype=torch.long)
        labels_BL = torch.full((len(records), max_len), IGNORE_INDEX, dtype=torch.long)
        for b, record in enumerate(records):
            tokens = torch.tensor(record["tokens"])
            input_ids_BL[b, : len(tokens)] = tokens
            labels_BL[b, record["num_prompt"] : len(tokens)] = tokens[record["num_prompt"] :]
        logits_BLV = self.logprob_VV[input_ids_BL]  # log-probabilities are valid logits
        mean_B, num_B = mean_answer_logprob(logits_BLV, labels_BL)
        return mean_B.numpy(), num_B.numpy()


def uniform(vocab: int) -> list[list[float]]:
    """Every next token equally likely."""
    return [[1.0 / vocab] * vocab for _ in range(vocab)]


def memorizer(vocab: int, sequence: list[int], confidence: float = 0.9) -> list[list[float]]:
    """Puts `confidence` on each next token of `sequence` (a model that has fitted that sample)."""
    rest = (1.0 - confidence) / (vocab - 1)
    probs = uniform(vocab)
    for cur, nxt in zip(sequence[:-1], sequence[1:], strict=True):
        probs[cur] = [confidence if v == nxt else rest for v in range(vocab)]
    return probs


def _wait_for_gate(records: Sequence[dict[str, Any]], timeout_s: float = 60.0) -> None:
    """Hold a batch holding a `gate` record until that file exists (a test opens it once it has seen what it needs);
    the first batch to wait `timeout_s` opens it for all."""
    for record in records:
        if "gate" in record:
            gate, deadline = Path(record["gate"]), time.monotonic() + timeout_s
            while not gate.exists():
                if time.monotonic() > deadline:
                    gate.touch()
                time.sleep(0.05)


def _maybe_fail(records: Sequence[dict[str, Any]]) -> None:
    """Fault injection: the first time a batch holding a `crash` record is seen (marker file absent), die."""
    for record in records:
        crash = record.get("crash")
        if not crash:
            continue
        marker = Path(crash["marker"])
        if marker.exists():
            return
        marker.write_text("died once")
        if crash["how"] == "exit":
            os._exit(1)
        if crash["how"] == "ray.kill":
            import ray

            ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
            time.sleep(30)  # killed before this returns
