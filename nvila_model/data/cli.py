"""CLI commands of nvila_model.data, registered on the main `nvila` app by flows/cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer

data_app = typer.Typer(help="Synthetic corpus generation and manifest validation.", no_args_is_help=True)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file")


@data_app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="the corpus folder to write"),
    params: Path = PARAMS,
) -> None:
    """Write the synthetic multi-task visual-QA corpus: {train,val,test}.jsonl, images/, videos/, subsets.json."""
    from ..params import load_config
    from .generate import run_generate
    from .manifest import SUBSETS_FILE

    root = run_generate(load_config("generate", params), out)
    table = json.loads((root / SUBSETS_FILE).read_text())
    for row in table:
        typer.echo(f"{row['name']:<11} {row['media']:<7} chance {row['chance']:.3f}  sizes {row['sizes']}")
    typer.echo(f"wrote {root}")


@data_app.command("validate")
def validate(
    raw: Path = typer.Option(..., "--raw", help="the corpus folder to validate ({split}.jsonl or {split}.json)"),
    out: Path = typer.Option(..., "--out", help="the validated corpus folder to write"),
    media_root: Path | None = typer.Option(None, "--media-root", help="the folder media paths are relative to "
                                           "(LLaVA's image folder); default: the corpus folder"),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="processor or tokenizer folder: exact token "
                                          "counts for the length check (default: a UTF-8 byte bound)"),
    docs: Path | None = typer.Option(None, "--docs", help="the folder for the great-expectations data docs "
                                     "(default: OUT/data_docs)"),
    params: Path = PARAMS,
) -> None:
    """Run the great-expectations suite and decode checks; write clean manifests, quarantine, summary, data docs."""
    from ..params import load_params
    from .validate import run_validate

    try:
        configs = load_params(params, keys=["validate", "model"])
        run_validate(configs["validate"], raw, out, tokenizer, configs["model"], media_root, docs)
    finally:
        summary = out / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            typer.echo(f"input {s['input']}  kept {s['kept']}  quarantined {s['quarantined']}  {s['by_reason']}  "
                       f"(+ {s['blank_lines']} blank lines)")
    typer.echo(f"wrote {out}")


@data_app.command("datasets")
def datasets(
    data: Path | None = typer.Option(None, "--data", help="the validated corpus folder (entries without a manifest)"),
    params: Path = PARAMS,
) -> None:
    """List the registered datasets and mixtures with their train sizes."""
    from ..params import load_config
    from .registry import DatasetRegistry

    registry = DatasetRegistry(load_config("datasets", params), data)
    for name in registry.names():
        try:
            size = len(registry.records(name, "train"))
        except ValueError as exc:
            size = f"unavailable ({exc})"
        typer.echo(f"{name:<16} train records: {size}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(data_app, name="data")
