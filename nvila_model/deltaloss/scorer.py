"""Scoring a batch of manifest records with a small and a large scorer model (teacher forcing, batched)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from nvila_model.deltaloss.formula import delta_score

# The columns of data/scores/scores.parquet, in order.
SCORE_COLUMNS = ("id", "subset", "logp_small", "logp_large", "score", "num_tokens", "defect")


class LogprobModel(Protocol):
    """A scorer: mean log-likelihood of each record's answer tokens under one model."""

    def mean_logprobs(self, records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """`(mean_logp [N] float, num_answer_tokens [N] int)` for `records`, in order (NaN where K = 0)."""
        ...


# A picklable zero-argument callable building a scorer inside a Ray actor (e.g. a functools.partial).
ScorerFactory = Callable[[], LogprobModel]


@dataclasses.dataclass(frozen=True)
class ScorerPair:
    """How to build the two scorers; each Ray actor calls both factories once."""

    small: ScorerFactory
    large: ScorerFactory

    def build(self) -> tuple[LogprobModel, LogprobModel]:
        """Instantiate (small, large)."""
        return self.small(), self.large()


def score_batch(small: LogprobModel, large: LogprobModel, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One output row per record: id, subset, both mean log-likelihoods, the DeltaLoss score, K, defect tag."""
    logp_small, _ = small.mean_logprobs(records)
    logp_large, num_tokens = large.mean_logprobs(records)
    assert len(logp_small) == len(logp_large) == len(records), "a scorer returned the wrong number of values"
    rows = []
    for record, lp_s, lp_l, k in zip(records, logp_small, logp_large, num_tokens, strict=True):
        rows.append(
            {
                "id": str(record["id"]),
                "subset": str(record.get("subset", "default")),
                "logp_small": float(lp_s),
                "logp_large": float(lp_l),
                "score": delta_score(float(lp_l), float(lp_s)),
                "num_tokens": int(k),
                "defect": record.get("defect"),
            }
        )
    return rows


def make_batches(records: Sequence[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    """Cut `records` into consecutive batches of `batch_size` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"score.batch_size must be >= 1, got {batch_size}")
    return [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]


def score_records_local(pair: ScorerPair, records: Sequence[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """The plain single-process loop: build both scorers here and score every batch in turn."""
    small, large = pair.build()
    rows: list[dict[str, Any]] = []
    for batch in make_batches(records, batch_size):
        rows.extend(score_batch(small, large, batch))
    return rows


def check_ids(records: Sequence[dict[str, Any]], where: str) -> list[str]:
    """The record ids in order; a missing or repeated id is a `ValueError` naming `where`."""
    ids = []
    for i, record in enumerate(records):
        if "id" not in record:
            raise ValueError(f"{where}: record {i} has no 'id'")
        ids.append(str(record["id"]))
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"{where}: repeated record ids, e.g. {dup}")
    return ids
