"""CLI commands of nvila_model.deltaloss (`nvila score`, `nvila prune`), registered on the main `nvila` app."""

from __future__ import annotations

from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file")
DATA = typer.Option(..., "--data", help="the validated corpus folder (its train.jsonl is scored / pruned)")


def score(
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", help="the scores folder to write"),
    scorers: Path = typer.Option(..., "--scorers", help="where the bootstrap proxy scorers are trained"),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="the tokenizer folder (for the bootstrap proxies)"),
    media_root: Path | None = typer.Option(None, "--media-root", help="the folder the records' media paths are "
                                           "relative to (default: the one the corpus's manifest.json names)"),
    params: Path = PARAMS,
) -> None:
    """DeltaLoss-score every training record with a small and a large model on a Ray actor pool.

    Writes scores.parquet (id, subset, logp_small, logp_large, score), one histogram PNG per subset, summary.json
    and manifest.json. Without checkpoints (`score.small_checkpoint`, `score.large_checkpoint`) small and large
    proxies are trained briefly first. RAY_ADDRESS (or score.ray.address) joins a running Ray cluster; otherwise a
    local instance is started.
    """
    from nvila_model.deltaloss.stage import run_score
    from nvila_model.params import load_config
    from nvila_model.tracking import current_tracker

    typer.echo(run_score(load_config("score", params), data=data, out=out, scorers=scorers, tokenizer=tokenizer,
                         media_root=media_root, tracker=current_tracker()))


def prune(
    data: Path = DATA,
    scores: Path = typer.Option(..., "--scores", help="the scores folder of `nvila score`"),
    out: Path = typer.Option(..., "--out", help="the pruned subset folder to write"),
    params: Path = PARAMS,
) -> None:
    """Keep each subset's top `prune.keep_ratio` share by DeltaLoss score (or a seeded random share).

    Writes train.jsonl, summary.json and manifest.json; subsets in prune.protected_subsets are kept whole.
    """
    from nvila_model.deltaloss.prune import run_prune
    from nvila_model.params import load_config

    typer.echo(run_prune(load_config("prune", params), data=data, scores=scores, out=out))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("score")(score)
    app.command("prune")(prune)
