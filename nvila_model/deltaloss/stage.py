"""The `score` stage: DeltaLoss-score every record of a manifest and write the table, histograms and manifest."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

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


def subset_stats(scores: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per subset: count, mean / median score, and the mean score of clean and of defect records."""
    out = {}
    for subset, group in scores.groupby("subset", sort=True):
        stats = {"count": int(len(group)), "mean_score": float(group["score"].mean()),
                 "median_score": float(group["score"].median()), "unscored": int(group["score"].isna().sum())}
        for kind, part in group.groupby(group["defect"].fillna("clean")):
            stats[f"mean_score_{kind}"] = float(part["score"].mean())
        out[str(subset)] = stats
    return out


def run_score(cfg: ScoreConfig, *, data: str | Path, out: str | Path, scorers: str | Path,
              tokenizer: str | Path, tracker: Tracker | None = None) -> Path:
    """Score the train split of the corpus `data` with the configured checkpoints, or with proxies trained into
    `scorers` (from the `tokenizer`) when none are configured; write the table, histograms and summary to `out`."""
    tracker = tracker or NullTracker()
    manifest = Path(data) / TRAIN_MANIFEST
    records = read_manifest(manifest)
    if cfg.max_samples is not None:
        records = records[: cfg.max_samples]
    check_ids(records, manifest)
    media_root = media_root_for(manifest, None, f"the media root of {data}").resolve()
    if cfg.small_checkpoint is None:
        from nvila_model.deltaloss.bootstrap import bootstrap_scorers

        small, large = bootstrap_scorers(cfg.bootstrap, records, media_root, tokenizer, scorers, cfg.seed)
    else:
        from nvila_model.checkpoint import check_nvila_checkpoint

        small, large = Path(cfg.small_checkpoint), Path(cfg.large_checkpoint)
        for path in (small, large):  # here, not inside a Ray actor where it would surface as ActorDiedError
            check_nvila_checkpoint(path, task="score with")
    Path(scorers).mkdir(parents=True, exist_ok=True)  # which scorers were used, beside any trained proxies
    (Path(scorers) / "scorers.json").write_text(json.dumps({"small": str(small), "large": str(large),
                                                            "bootstrap": cfg.small_checkpoint is None}, indent=2))
    start = time.perf_counter()
    rows = score_rows(checkpoint_pair(cfg, small, large, media_root), records, cfg)
    seconds = time.perf_counter() - start
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    with staged_output(out) as tmp:
        scores.to_parquet(tmp / SCORES_FILE, index=False)
        histograms = write_histograms(scores, tmp)
        summary = {"num_records": len(scores), "seconds": seconds,
                   "samples_per_s": len(scores) / max(seconds, 1e-9), "small_checkpoint": str(small),
                   "large_checkpoint": str(large), "subsets": subset_stats(scores)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        write_stage_manifest(tmp, "score", to_dict(cfg), inputs={"manifest": manifest, "small": small,
                                                                 "large": large}, num_records=len(scores))
    tracker.log_params({"score.small_checkpoint": str(small), "score.large_checkpoint": str(large),
                        "score.num_actors": cfg.ray.num_actors})
    tracker.log_metrics({"score.samples_per_s": summary["samples_per_s"],
                         **{f"score.mean.{s}": v["mean_score"] for s, v in summary["subsets"].items()}})
    for path in histograms:
        tracker.log_artifact(Path(out) / path.name, "scores")
    return Path(out)
