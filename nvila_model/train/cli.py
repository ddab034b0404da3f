"""CLI commands of nvila_model.train, registered on the main `nvila` app by flows/cli.py."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
