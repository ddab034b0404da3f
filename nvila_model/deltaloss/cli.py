"""CLI commands of nvila_model.deltaloss (`nvila score`, `nvila prune`), registered on the main `nvila` app."""

from __future__ import annotations

from pathlib import Path

import typer

from nvila_model.deltaloss.config import PruneConfig, ScoreConfig
from nvila_model.params import load_config


def score(
    params: Path = typer.Option(Path("params.yaml"), help="params file; the `score` key is read"),
    manifest: str = typer.Option(None, help="override score.manifest (JSON-lines training manifest)"),
    out_dir: str = typer.Option(None, help="override score.out_dir"),
    small_checkpoint: str = typer.Option(None, help="override score.small_checkpoint (with --large-checkpoint)"),
    large_checkpoint: str = typer.Option(None, help="override score.large_checkpoint (the previous run's model)"),
    max_samples: int = typer.Option(None, help="score only the first N records"),
) -> None:
    """DeltaLoss-score every training record with a small and a large model on a Ray actor pool.

    Writes scores.parquet (id, subset, logp_small, logp_large, score), one histogram PNG per subset, summary.json
    and manifest.json to score.out_dir. Without checkpoints, small and large proxies are trained briefly first.
    RAY_ADDRESS (or score.ray.address) joins a running Ray cluster; otherwise a local instance is started.
    """
    from nvila_model.deltaloss.stage import run_score

    overrides = {"manifest": manifest, "out_dir": out_dir, "small_checkpoint": small_checkpoint,
                 "large_checkpoint": large_checkpoint, "max_samples": max_samples}
    cfg = load_config("score", ScoreConfig, params, overrides)
    typer.echo(run_score(cfg))


def prune(
    params: Path = typer.Option(Path("params.yaml"), help="params file; the `prune` key is read"),
    scores: str = typer.Option(None, help="override prune.scores (scores.parquet of `nvila score`)"),
    manifest: str = typer.Option(None, help="override prune.manifest"),
    out_dir: str = typer.Option(None, help="override prune.out_dir"),
    keep_ratio: float = typer.Option(None, help="override prune.keep_ratio (the point training reads)"),
    method: str = typer.Option(None, help="override prune.method: deltaloss | random"),
) -> None:
    """Keep each subset's top share by DeltaLoss score (and a seeded random share) at every keep ratio.

    Writes <out_dir>/<method>-<ratio>/{train.jsonl, summary.json, manifest.json} for both methods and every ratio in
    prune.keep_ratios plus prune.keep_ratio; subsets in prune.protected_subsets are kept whole.
    """
    from nvila_model.deltaloss.prune import run_prune

    overrides = {"scores": scores, "manifest": manifest, "out_dir": out_dir, "keep_ratio": keep_ratio,
                 "method": method}
    cfg = load_config("prune", PruneConfig, params, overrides)
    typer.echo(run_prune(cfg))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("score")(score)
    app.command("prune")(prune)
