"""CLI commands of nvila_model.data, registered on the main `nvila` app by flows/cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..params import load_config

data_app = typer.Typer(help="Synthetic corpus generation and manifest validation.", no_args_is_help=True)


@data_app.command("generate")
def generate(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads its `generate` key"),
    scale: float | None = typer.Option(None, help="multiply every subset's split sizes (10, 100 for benchmarks)"),
    seed: int | None = typer.Option(None, help="random seed (same seed -> same bytes)"),
    out_dir: str | None = typer.Option(None, help="parent folder of the corpus (default from params)"),
    name: str | None = typer.Option(None, help="corpus name: output goes to OUT_DIR/NAME"),
) -> None:
    """Write the synthetic multi-task visual-QA corpus: {train,val,test}.jsonl, images/, videos/, subsets.json."""
    from .generate import GenerateConfig, run_generate

    cfg = load_config("generate", GenerateConfig, params,
                      overrides={"scale": scale, "seed": seed, "out_dir": out_dir, "name": name})
    root = run_generate(cfg)
    table = json.loads((root / "subsets.json").read_text())
    for row in table:
        typer.echo(f"{row['name']:<11} {row['media']:<7} chance {row['chance']:.3f}  sizes {row['sizes']}")
    typer.echo(f"wrote {root}")


@data_app.command("validate")
def validate(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads its `validate` and `model` keys"),
    name: str | None = typer.Option(None, help="corpus name under raw_dir"),
    media_root: Path | None = typer.Option(None, help="folder the media paths are relative to (LLaVA's image "
                                                      "folder); default: the manifests' folder"),
    tokenizer: str | None = typer.Option(None, help="processor / tokenizer dir for exact token counts (default: a "
                                                    "UTF-8 byte bound)"),
    max_reject_share: float | None = typer.Option(None, help="fail when a subset rejects more than this share"),
) -> None:
    """Run the great-expectations suite and decode checks; write clean manifests, quarantine, summary, data docs."""
    from ..train.config import ModelParams
    from .validate import ValidateConfig, run_validate

    cfg = load_config("validate", ValidateConfig, params,
                      overrides={"name": name, "tokenizer": tokenizer, "max_reject_share": max_reject_share})
    try:
        out = run_validate(cfg, load_config("model", ModelParams, params), media_root=media_root)
    finally:
        summary = Path(cfg.out_dir) / cfg.name / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            typer.echo(f"input {s['input']}  kept {s['kept']}  quarantined {s['quarantined']}  {s['by_reason']}  "
                       f"(+ {s['blank_lines']} blank lines)")
    typer.echo(f"wrote {out}")


@data_app.command("datasets")
def datasets(params: Path = typer.Option(Path("params.yaml"), help="params file; reads its `datasets` key")) -> None:
    """List the registered datasets and mixtures with their train sizes."""
    from .registry import DatasetRegistry, DatasetsConfig

    registry = DatasetRegistry(load_config("datasets", DatasetsConfig, params))
    for name in registry.names():
        try:
            size = len(registry.records(name, "train"))
        except ValueError as exc:
            size = f"unavailable ({exc})"
        typer.echo(f"{name:<16} train records: {size}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(data_app, name="data")
