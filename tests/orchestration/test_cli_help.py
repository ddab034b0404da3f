"""Every registered `nvila` command, nested groups included, answers `--help`."""

from __future__ import annotations

import sys
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
        # options read cleanly: a flag shows no type tag, and there is no box drawing to garble logs
        assert "<bool>" not in result.output and "╭" not in result.output, result.output
        if path == ("data", "validate"):
            assert "--media-root <path>" in result.output  # an option taking a value still says what kind
    assert ("pipeline", "run") in paths and ("ui",) in paths


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch) -> None:
    import pytest

    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # main() defaults it off a terminal; keep it to this test
    monkeypatch.setattr("sys.argv", ["nvila", "prune", "--params", "missing.yaml", "--data", "d", "--scores", "s",
                                     "--out", "o"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == "nvila: error: missing.yaml: params file not found"
    argv = list(sys.argv)
    monkeypatch.setattr("sys.argv", ["nvila", "train", "nosuchstage", "--out", "o"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == ("nvila: error: train: unknown stage 'nosuchstage'; choose one of "
                                               "['projector_init', 'vision_pretrain', 'token_pretrain', "
                                               "'image_sft', 'video_sft']")
    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.setenv("NVILA_DEBUG", "1")
    with pytest.raises(ValueError, match="params file not found"):
        main()
