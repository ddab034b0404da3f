"""The `score` stage: DeltaLoss-score every record of a manifest and write the table, histograms and manifest."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nvila_model.data.manifest import media_root_for, read_manifest
from nvila_model.deltaloss.config import SCORES_FILE, TRAIN_MANIFEST, ScoreConfig
from nvila_model.deltaloss.scorer import SCORE_COLUMNS, ScorerPair, check_ids, score_records_local
from nvila_model.manifest import staged_output, write_stage_manifest
from nvila_model.params import to_dict
from nvila_model.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


def checkpoint_pair(cfg: ScoreConfig, small: str | Path, large: str | Path, media_root: Path) -> ScorerPair:
    """Factories that each Ray actor (or the local loop) calls once to load the two checkpoints."""
    from nvila_model.deltaloss.checkpoint_scorer import CheckpointScorer

    def factory(path: str | Path) -> functools.partial:
        return functools.partial(CheckpointScorer, str(Path(path).resolve()), str(media_root),
                                 cfg.micro_batch_size, cfg.dtype, cfg.device)

    return ScorerPair(small=factory(small), large=factory(large))


def score_rows(pair: ScorerPair, records: list[dict[str, Any]], cfg: ScoreConfig) -> list[dict[str, Any]]:
    """Rows from the Ray pool, or from the in-process loop when `ray.num_actors` is 0."""
    if cfg.ray.num_actors == 0:
        return score_records_local(pair, records, cfg.batch_size)
    from nvila_model.deltaloss.ray_pool import score_records_ray

    rows, stats = score_records_ray(pair, records, cfg.batch_size, cfg.ray)
    log.info("scored %d batches; %d actors started, %d died", stats.num_batches, stats.num_actors_started,
             stats.num_actors_died)
    return rows


def write_histograms(scores: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One PNG per subset, `hist-<subset>.png`: scores of clean records, and of each injected defect kind apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for subset, group in scores.groupby("subset", sort=True):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        defect = group["defect"].fillna("clean")
        values = [group.loc[defect == kind, "score"].dropna() for kind in sorted(defect.unique())]
        ax.hist(values, bins=30, stacked=True, label=sorted(defect.unique()))
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set(title=f"DeltaLoss scores: {subset} (n={len(group)})", xlabel="mean log p_large - mean log p_small",
               ylabel="records")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / f"hist-{subset}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def noise_auc(scores: pd.DataFrame) -> dict[str, float]:
    """How well a low DeltaLoss score (`score`), and a low large-scorer likelihood (`large`), pick out the records
    whose answer the generator made wrong (`defect` "noise"): ROC AUC, 0.5 no better than chance. Empty without
    both noisy and other records (real data has no defect tags)."""
    from sklearn.metrics import roc_auc_score

    scored = scores.dropna(subset=["score"])
    noisy = scored["defect"].eq("noise")
    if noisy.all() or not noisy.any():
        return {}
    return {"score": float(roc_auc_score(noisy, -scored["score"])),
            "large": float(roc_auc_score(noisy, -scored["logp_large"]))}


def subset_stats(scores: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per subset: count, mean / median score, the mean score of clean and of defect records, and the noise AUCs."""
    out = {}
    for subset, group in scores.groupby("subset", sort=True):
        stats = {"count": int(len(group)), "mean_score": float(group["score"].mean()),
                 "median_score": float(group["score"].median()), "unscored": int(group["score"].isna().sum())}
        for kind, part in group.groupby(group["defect"].fillna("clean")):
            stats[f"mean_score_{kind}"] = float(part["score"].mean())
        stats |= {f"noise_auc_{role}": auc for role, auc in noise_auc(group).items()}
        out[str(subset)] = stats
    return out


def scorer_pairs(cfg: ScoreConfig, records: list[dict[str, Any]], media_root: Path, tokenizer: str | Path,
                 scorers: str | Path) -> list[tuple[Path, Path, np.ndarray]]:
    """(small, large, indices of the records they score) per scorer pair: the configured checkpoints for every
    record, or bootstrap proxies trained into `scorers` (one pair, or one per fold when cross-fitting)."""
    if cfg.small_checkpoint is not None:
        from nvila_model.checkpoint import check_nvila_checkpoint

        small, large = Path(cfg.small_checkpoint), Path(cfg.large_checkpoint)
        for path in (small, large):  # here, not inside a Ray actor where it would surface as ActorDiedError
            check_nvila_checkpoint(path, task="score with")
        return [(small, large, np.arange(len(records)))]
    from nvila_model.deltaloss.bootstrap import bootstrap_scorers, fold_plan

    pairs = []
    plan = fold_plan(len(records), cfg.bootstrap.folds, cfg.seed)
    for k, (train, scored) in enumerate(plan):
        out = Path(scorers) / (f"fold-{k}" if len(plan) > 1 else "")
        small, large = bootstrap_scorers(cfg.bootstrap, [records[i] for i in train], media_root, tokenizer, out,
                                         cfg.seed)
        pairs.append((small, large, scored))
    return pairs


def run_score(cfg: ScoreConfig, *, data: str | Path, out: str | Path, scorers: str | Path,
              tokenizer: str | Path, media_root: str | Path | None = None, tracker: Tracker | None = None) -> Path:
    """Score the train split of the corpus `data` with the configured checkpoints, or with proxies trained into
    `scorers` (from the `tokenizer`) when none are configured (per fold when `score.bootstrap.folds` > 1: no record
    is then scored by a proxy that trained on it); write the table, histograms and summary to `out`.

    `media_root` None: the folder the corpus's manifest.json names. The pipeline passes it, so the scores depend on
    the train records and their media only: a validation setting that keeps the same records (e.g. a token limit
    raised with the model's token count) restores them from the cache instead of scoring again."""
    tracker = tracker or NullTracker()
    manifest = Path(data) / TRAIN_MANIFEST
    records = read_manifest(manifest)
    if cfg.max_samples is not None:
        records = records[: cfg.max_samples]
    check_ids(records, manifest)
    media_root = media_root_for(manifest, media_root, "score --media-root").resolve()
    pairs = scorer_pairs(cfg, records, media_root, tokenizer, scorers)
    Path(scorers).mkdir(parents=True, exist_ok=True)  # which scorers were used, beside any trained proxies
    used = [{"small": str(small), "large": str(large), "num_scored": len(scored)} for small, large, scored in pairs]
    (Path(scorers) / "scorers.json").write_text(json.dumps({**used[0], "bootstrap": cfg.small_checkpoint is None,
                                                            "folds": used}, indent=2))
    start = time.perf_counter()
    rows: list[dict[str, Any]] = [{} for _ in records]
    for small, large, scored in pairs:
        part = score_rows(checkpoint_pair(cfg, small, large, media_root), [records[i] for i in scored], cfg)
        for i, row in zip(scored, part, strict=True):
            rows[i] = row
    seconds = time.perf_counter() - start
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    small, large = (", ".join(sorted({u[role] for u in used})) for role in ("small", "large"))
    with staged_output(out) as tmp:
        scores.to_parquet(tmp / SCORES_FILE, index=False)
        histograms = write_histograms(scores, tmp)
        summary = {"num_records": len(scores), "seconds": seconds,
                   "samples_per_s": len(scores) / max(seconds, 1e-9), "small_checkpoint": small,
                   "large_checkpoint": large, "folds": len(pairs), "noise_auc": noise_auc(scores),
                   "subsets": subset_stats(scores)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        inputs = {"manifest": manifest} | {f"{role}{'' if len(pairs) == 1 else f'-{k}'}": path
                                            for k, (s, lg, _) in enumerate(pairs)
                                            for role, path in (("small", s), ("large", lg))}
        write_stage_manifest(tmp, "score", to_dict(cfg), inputs=inputs, num_records=len(scores))
    tracker.log_params({"score.small_checkpoint": small, "score.large_checkpoint": large,
                        "score.num_actors": cfg.ray.num_actors, "score.folds": len(pairs)})
    tracker.log_metrics({"score.samples_per_s": summary["samples_per_s"],
                         **{f"score.mean.{s}": v["mean_score"] for s, v in summary["subsets"].items()},
                         **{f"score.noise_auc.{role}": auc for role, auc in summary["noise_auc"].items()}})
    for path in histograms:
        tracker.log_artifact(Path(out) / path.name, "scores")
    return Path(out)
