"""CLI commands `nvila import` and `nvila export`, registered on the main app by flows/cli.py."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("import")(import_checkpoint)
    app.command("export")(export_checkpoint)


def import_checkpoint(
    src: Path = typer.Argument(..., help="a released NVILA checkpoint (config.json, llm/, vision_tower/, "
                                         "mm_projector/)"),
    out: Path = typer.Argument(..., help="output: a project checkpoint directory"),
) -> None:
    """Import a released NVILA checkpoint; anything it can not map faithfully stops it with one line."""
    from nvila_model.official import import_official

    typer.echo(f"wrote {import_official(src, out)}")


def export_checkpoint(
    ckpt: Path = typer.Argument(..., help="a project checkpoint directory (not quantized)"),
    out: Path = typer.Argument(..., help="output: a directory in the released NVILA layout"),
) -> None:
    """Export a project checkpoint in the released NVILA layout, loadable by the reference code."""
    from nvila_model.official import export_official

    typer.echo(f"wrote {export_official(ckpt, out)}")
