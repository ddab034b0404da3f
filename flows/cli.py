"""The `nvila` command line: each area of the library registers its own sub-commands here."""

from __future__ import annotations

import os
import sys

import typer

from nvila_model.console import configure_console
from nvila_model.data import cli as data_cli
from nvila_model.deltaloss import cli as deltaloss_cli
from nvila_model.quant import cli as quant_cli
from nvila_model.train import cli as train_cli

app = typer.Typer(help="NVILA pipeline: data, DeltaLoss pruning, five-stage training, fine-tuning, deployment.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"max_content_width": 120})  # plain help, no <bool> tags

for module in (data_cli, train_cli, deltaloss_cli, quant_cli):
    module.register(app)

try:  # the orchestration commands (`nvila pipeline ...`, `nvila ui`) live with the flows
    from flows import commands as flow_commands
except ImportError as exc:  # pragma: no cover - only while flows/commands.py is absent
    if exc.name != "flows.commands":
        raise
else:
    flow_commands.register(app)



def main() -> None:
    """The `nvila` console script: a bad input (ValueError naming the file or setting and the problem) prints as
    one line and exits 2; NVILA_DEBUG=1 shows the traceback."""
    configure_console()
    try:
        app()
    except ValueError as exc:
        if os.environ.get("NVILA_DEBUG") == "1":
            raise
        typer.echo(f"nvila: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
