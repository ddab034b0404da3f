"""Every registered `nvila` command, nested groups included, answers `--help`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(("args", "expected"), [
    (["--keep-ratio", "1.5"], "params.yaml: prune.keep_ratio: Input should be less than or equal to 1 (got 1.5)"),
    (["--keep-ratio", "0"], "params.yaml: prune.keep_ratio: Input should be greater than 0 (got 0.0)"),
    (["--preset", "nope-9b"], "params.yaml: model.preset: Input should be 'tiny', 'small', 'gpu-check', 'nvila-8b' "
                              "or 'nvila-lite-8b' (got 'nope-9b')"),
    (["--set", "image_sft.max_stepz=3"], "params.yaml: image_sft.max_stepz: unknown key; allowed: ["),
    (["--set", "image_sft.lr={vision_tower: 1e-4, projector: x, language_model: 1e9}"],
     "params.yaml: image_sft.lr.projector: Input should be a valid number"),
])
def test_bad_run_settings_are_one_line_before_anything_starts(args, expected, tmp_path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "NVILA_PROJECT_DIR": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "pipeline", "run", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nvila: error: ") and expected in lines[0], lines
    assert not (tmp_path / ".prefect").exists() and not (tmp_path / ".nvila").exists(), "nothing started"


def test_trigger_parameters_are_checked_in_one_line() -> None:
    from flows.deploy import check_parameters
    from flows.pipeline import nvila_pipeline

    with pytest.raises(ValueError, match=r"invalid parameters: - stages\.list\[str\]: Input should be a valid list"):
        check_parameters(nvila_pipeline, {"stages": "generate"})
    with pytest.raises(ValueError, match=r"parameters \['stagez'\] unknown"):
        check_parameters(nvila_pipeline, {"stagez": ["generate"]})
    check_parameters(nvila_pipeline, {"stages": ["generate"], "keep_ratio": 0.5})


def test_server_errors_reach_the_terminal(tmp_path, capsys) -> None:
    import time

    from flows.services import watch_log

    log = tmp_path / "prefect-server.log"
    log.write_text("old ERROR that was there before\n")
    watch_log(log, "prefect server")
    with open(log, "a") as fh:
        fh.write("INFO all good\nsqlalchemy.exc.InvalidRequestError ERROR Can't evaluate bulk DML statement\n")
    deadline, err = time.monotonic() + 10, ""
    while not err and time.monotonic() < deadline:
        err = capsys.readouterr().err
        time.sleep(0.2)
    assert err.strip() == (f"prefect server: sqlalchemy.exc.InvalidRequestError ERROR Can't evaluate bulk DML "
                           f"statement  (full log: {log})")


def test_two_runs_starting_at_once_both_get_a_prefect_server(tmp_path) -> None:
    """Two `nvila pipeline run`s started together share the project's Prefect database; the second server used to
    exit (code 3) while the first one was creating it."""
    import subprocess

    code = ("import sys, urllib.request; from pathlib import Path; from flows.services import prefect_api\n"
            "with prefect_api(Path(sys.argv[1])) as url:\n"
            "    print('up', urllib.request.urlopen(url + '/health').status)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(tmp_path / ".prefect"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("up 200" in out for out in outs)
