"""The `nvila` command line: each area of the library registers its own sub-commands here.

When the pipeline runs a stage command it passes, through the environment, the MLflow run to log to
(`NVILA_MLFLOW_RUN_ID`) and a file to touch once the command really runs (`NVILA_STAGE_MARKER`: a stage DVC
restores from its cache never gets here). `NVILA_TRACE` names a file to which the command appends the project
modules it loaded and the params keys it read (the test that `dvc.yaml` lists every dependency reads it).
`NVILA_NUM_THREADS` is the stage's share of the CPU threads when the run has other stages running beside it.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

import typer

from flows import commands as flow_commands
from nvila_model.cli import configure_console
from nvila_model.data import cli as data_cli
from nvila_model.deltaloss import cli as deltaloss_cli
from nvila_model.official import cli as official_cli
from nvila_model.peer import cli as peer_cli
from nvila_model.quant import cli as quant_cli
from nvila_model.train import cli as train_cli
from tasks.dvc_stages import StageFailed
from tasks.env import THREADS_ENV, configure
from tasks.warm import SOCKET_ENV, run_client

app = typer.Typer(help="NVILA pipeline: data, DeltaLoss pruning, five-stage training, fine-tuning, deployment.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"max_content_width": 120})  # plain help, no <bool> tags

for module in (data_cli, train_cli, deltaloss_cli, quant_cli, official_cli, peer_cli, flow_commands):
    module.register(app)

TRANSIENT_EXIT = 75  # EX_TEMPFAIL: an I/O error worth a retry (the pipeline's stage task retries on it)
USER_FS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _trace(path: str) -> None:
    """Append {argv, modules, params keys} of this process to `path` at exit."""
    root = Path(__file__).resolve().parent.parent

    def dump() -> None:
        from nvila_model.params import keys_read

        files = sorted({str(Path(m.__file__).resolve().relative_to(root)) for m in list(sys.modules.values())
                        if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(root)})
        with open(path, "a") as fh:
            fh.write(json.dumps({"argv": sys.argv[1:], "modules": files, "keys": sorted(keys_read())}) + "\n")

    atexit.register(dump)


def _setup_stage_run() -> None:
    """The tracker a tracked stage logs through, the executed-stage marker, the trace and the stage's share of the
    CPU threads, from the environment."""
    if os.environ.get(THREADS_ENV):
        import torch

        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    if os.environ.get("NVILA_TRACE"):
        _trace(os.environ["NVILA_TRACE"])
    if os.environ.get("NVILA_STAGE_MARKER"):
        Path(os.environ["NVILA_STAGE_MARKER"]).touch()
    from tasks.tracking import tracker_from_env

    tracker = tracker_from_env()
    if tracker is not None:
        from nvila_model.tracking import set_tracker

        set_tracker(tracker)


def _error(lines: list[str], code: int) -> None:
    for line in lines:
        typer.echo(f"nvila: error: {line}", err=True)
    sys.exit(code)


def main() -> None:
    """The `nvila` console script: a bad input (a ValueError naming the file or setting, a missing or unwritable
    path) prints as one line per problem and exits 2; another I/O error exits 75 (transient: the pipeline retries
    the stage); NVILA_DEBUG=1 shows the traceback instead. Inside a pipeline run the command runs in a child of the
    run's warm stage server (tasks/warm.py), which has the libraries imported already."""
    if os.environ.get(SOCKET_ENV):
        code = run_client(os.environ.pop(SOCKET_ENV))
        if code is not None:
            sys.exit(code)
    configure()
    configure_console()
    _setup_stage_run()
    try:
        app()
    except StageFailed as exc:  # the stage's own message; a bad input there is a bad input of the run
        if os.environ.get("NVILA_DEBUG") == "1":
            raise
        _error(str(exc).splitlines(), 2 if exc.exit_code == 2 else 1)
    except (KeyboardInterrupt, flow_commands.Interrupted):
        typer.echo("nvila: interrupted. Finished stages are in DVC's cache and an interrupted training stage keeps "
                   "its last checkpoint: run the same command again to resume.", err=True)
        sys.exit(130)
    except (ValueError, OSError) as exc:
        if os.environ.get("NVILA_DEBUG") == "1":
            raise
        if isinstance(exc, ValueError):
            _error(str(exc).splitlines() or [type(exc).__name__], 2)
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _error([f"{where}{exc.strerror or exc}"], 2 if isinstance(exc, USER_FS_ERRORS) else TRANSIENT_EXIT)


if __name__ == "__main__":
    main()
