"""Every registered `nvila` command, nested groups included, answers `--help`."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from flows.cli import app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under `group` (typer vendors click, so groups are recognised by their `commands`)."""
    found = [path]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, (*path, name))
    return found


def test_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    paths = _commands(root)
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"nvila {' '.join(path)} --help: {result.output}"
        assert "Usage" in result.output
    assert ("pipeline", "run") in paths and ("ui",) in paths


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch) -> None:
    import pytest

    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["nvila", "prune", "--params", "missing.yaml", "--data", "d", "--scores", "s",
                                     "--out", "o"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == "nvila: error: missing.yaml: params file not found"
    monkeypatch.setenv("NVILA_DEBUG", "1")
    with pytest.raises(ValueError, match="params file not found"):
        main()


def test_ui_refuses_ports_it_did_not_take(tmp_path) -> None:
    """A second `nvila ui` on ports in use stops with one line before starting anything (it must never take
    another instance's server for its own)."""
    import os
    import socket
    import subprocess
    import sys

    from flows.services import HOST, free_port

    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        env = {**os.environ, "NVILA_PROJECT_DIR": str(tmp_path)}
        (tmp_path / "params.yaml").write_text("seed: 0\n")
        done = subprocess.run([sys.executable, "-m", "flows.cli", "ui", "--prefect-port", str(port),
                               "--mlflow-port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"nvila: error: port {port} on {HOST} is in use (another `nvila ui`?); free it or choose another with "
        "--prefect-port"]
    assert not (tmp_path / ".prefect" / "logs").exists(), "nothing was started"
