"""Per-subset pruning: keep each subset's top share by DeltaLoss score (or a seeded random share), protected whole;
optionally the top share of each answer within the subset (`balance_answers`)."""

from __future__ import annotations

import json
import math
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nvila_model.data.manifest import media_root_for, read_manifest, write_jsonl
from nvila_model.deltaloss.config import SCORES_FILE, TRAIN_MANIFEST, PruneConfig
from nvila_model.manifest import staged_output, write_stage_manifest
from nvila_model.params import to_dict


def keep_count(num_records: int, ratio: float) -> int:
    """How many of a subset's `num_records` survive at `ratio`: round half up, at least one of a non-empty subset."""
    if num_records == 0:
        return 0
    return min(num_records, max(1, math.floor(ratio * num_records + 0.5)))


def rank_subset(scores: pd.DataFrame, method: str, subset: str, seed: int) -> list[str]:
    """The ids of one subset, best first: by score (NaN last, ties by id), or in a seeded random order."""
    if method == "deltaloss":
        ordered = scores.assign(_nan=scores["score"].isna()).sort_values(
            ["_nan", "score", "id"], ascending=[True, False, True], kind="mergesort"
        )
        return ordered["id"].tolist()
    if method == "random":
        # Seeded per subset (not by iteration order), so adding a subset does not reshuffle the others.
        rng = np.random.default_rng([seed, zlib.crc32(subset.encode())])
        ids = sorted(scores["id"].tolist())
        return [ids[i] for i in rng.permutation(len(ids))]
    raise ValueError(f"prune: unknown method {method!r}")


def final_answer(record: dict[str, Any]) -> str:
    """The record's last assistant turn, stripped and lower-cased: the class a short-answer record belongs to."""
    turns = [t for t in record.get("conversations", []) if t.get("from") == "gpt"]
    return str(turns[-1].get("value", "")).strip().lower() if turns else ""


def select(scores: pd.DataFrame, method: str, ratio: float, protected: list[str], seed: int,
           answers: dict[str, str] | None = None) -> set[str]:
    """The ids kept at `ratio`: per subset the top `keep_count` by `method`; protected subsets whole. With
    `answers` (id -> final answer), per (subset, answer) instead, so each answer keeps its share of the subset.

    Why the option: a score ranks records against each other across answers, and where the scorers have learned
    the answers' prior better than the images, the prior is what it ranks. On the frontier's corpus, with the
    bootstrap proxies, the final answer explains 74-83% of the score's variance in the counting, spatial and
    flashes subsets, and the DeltaLoss top half of `counting` holds two of its four answers mostly (answer entropy
    0.94 nats against 1.38): SFT on it learns the skewed prior. Ranking within each answer keeps the distribution
    and leaves the score to choose among records with the same answer.

    Orders do not depend on the ratio, so a lower ratio keeps a subset of what a higher one keeps.
    """
    kept: set[str] = set()
    for subset, group in scores.groupby("subset", sort=True):
        if subset in protected:
            kept.update(group["id"])
            continue
        strata = [("", group)] if answers is None else group.groupby(group["id"].map(answers), sort=True)
        for answer, part in strata:
            ranked = rank_subset(part, method, f"{subset}/{answer}" if answer else str(subset), seed)
            kept.update(ranked[:keep_count(len(ranked), ratio)])
    return kept


def _entropy(values: list[str]) -> float:
    """Entropy (nats) of the empirical distribution of `values`; 0 for none."""
    if not values:
        return 0.0
    p = np.array(list(Counter(values).values()), dtype=float) / len(values)
    return float(-(p * np.log(p)).sum())


def answer_entropy(records: list[dict[str, Any]], kept: set[str],
                   answers: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per subset, the entropy of the final answers (`answers`: id -> answer) of all its records and of the kept
    ones: how much a pruning skews what the subset teaches."""
    by_subset: dict[str, list[str]] = {}
    for r in records:
        by_subset.setdefault(str(r.get("subset", "default")), []).append(str(r["id"]))
    return {s: {"all": round(_entropy([answers[i] for i in ids]), 4),
                "kept": round(_entropy([answers[i] for i in ids if i in kept]), 4)}
            for s, ids in sorted(by_subset.items())}


def summarize(records: list[dict[str, Any]], kept: set[str], method: str, ratio: float,
              answers: dict[str, str]) -> dict[str, Any]:
    """Kept counts per subset, for injected defects the share of them the pruning removed, and the answer entropy."""
    total = Counter(str(r.get("subset", "default")) for r in records)
    kept_by = Counter(str(r.get("subset", "default")) for r in records if str(r["id"]) in kept)
    defects = Counter(str(r["defect"]) for r in records if r.get("defect"))
    defects_kept = Counter(str(r["defect"]) for r in records if r.get("defect") and str(r["id"]) in kept)
    return {
        "method": method,
        "keep_ratio": ratio,
        "num_records": len(records),
        "num_kept": len(kept),
        "subsets": {s: {"total": total[s], "kept": kept_by[s]} for s in sorted(total)},
        "defects_removed_share": {d: 1 - defects_kept[d] / n for d, n in sorted(defects.items())},
        "answer_entropy": answer_entropy(records, kept, answers),
    }


def load_scores(path: str | Path, ids: list[str]) -> pd.DataFrame:
    """The scores table, checked to hold exactly one row per manifest id."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: scores table not found (run `nvila score` first)")
    scores = pd.read_parquet(path)
    for col in ("id", "subset", "score"):
        if col not in scores.columns:
            raise ValueError(f"{path}: missing column {col!r}")
    scores["id"] = scores["id"].astype(str)
    if scores["id"].duplicated().any():
        raise ValueError(f"{path}: repeated ids, e.g. {scores.loc[scores['id'].duplicated(), 'id'].iloc[0]!r}")
    unscored, unknown = set(ids) - set(scores["id"]), set(scores["id"]) - set(ids)
    if unscored or unknown:
        example = sorted(unscored or unknown)[0]
        raise ValueError(f"{path}: {len(unscored)} manifest ids unscored, {len(unknown)} unknown ids "
                         f"(e.g. {example!r})")
    return scores


def run_prune(cfg: PruneConfig, *, data: str | Path, scores: str | Path, out: str | Path) -> Path:
    """Keep the `cfg.keep_ratio` share of each subset of the corpus `data`'s train split, by the DeltaLoss scores in
    `scores` (a score output folder) or at random; write `<out>/train.jsonl`, `summary.json` and `manifest.json`."""
    manifest = Path(data) / TRAIN_MANIFEST
    table = Path(scores) / SCORES_FILE
    records = read_manifest(manifest)
    scored = load_scores(table, [str(r["id"]) for r in records])
    unknown_protected = sorted(set(cfg.protected_subsets) - set(scored["subset"]))
    if unknown_protected:
        raise ValueError(f"prune.protected_subsets: no such subset(s) {unknown_protected} in {table}")
    answers = {str(r["id"]): final_answer(r) for r in records}
    kept = select(scored, cfg.method, cfg.keep_ratio, list(cfg.protected_subsets), cfg.seed,
                  answers if cfg.balance_answers else None)
    summary = summarize(records, kept, cfg.method, cfg.keep_ratio, answers)
    media_root = media_root_for(manifest, None, f"the media root of {data}")
    with staged_output(out) as tmp:
        write_jsonl([r for r in records if str(r["id"]) in kept], tmp / TRAIN_MANIFEST)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        # Records are copied unchanged; `media_root` (relative to the output) keeps their media paths resolvable.
        write_stage_manifest(tmp, "prune", to_dict(cfg), inputs={"manifest": manifest, "scores": table},
                             media_root=os.path.relpath(media_root.resolve(), Path(out).resolve()),
                             method=cfg.method, keep_ratio=cfg.keep_ratio, num_kept=len(kept))
    return Path(out)
