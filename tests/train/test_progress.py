"""Training progress: tqdm bars only on a terminal; otherwise one short line per log step and a closing line."""

from __future__ import annotations

import io
import re

import pytest

from nvila_model.params import load_params
from nvila_model.train.config import StageConfig
from nvila_model.train.stage import run_stage, training_arguments
from tests.train.conftest import stage_params


def test_tqdm_follows_the_terminal(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    cfg = StageConfig(train_modules=["projector"], lr={"projector": 1e-3}, datasets=["x"])
    monkeypatch.setattr("sys.stderr", Tty())
    assert training_arguments(cfg, tmp_path, bf16=False).disable_tqdm is False
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert training_arguments(cfg, tmp_path, bf16=False).disable_tqdm is True


def test_a_stage_without_a_terminal_prints_progress_lines(project, corpus_dir, capsys) -> None:
    configs = load_params("params.yaml", keys=["model", "datasets"])
    cfg = StageConfig(**stage_params("projector_init", max_steps=2, logging_steps=1))
    run_stage("projector_init", cfg, configs["model"], configs["datasets"], data=corpus_dir / "data/raw/synth",
              out="runs/projector_init", tokenizer=corpus_dir / "runs/tokenizer")
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    # no training bar (model-saving bars are turned off by the entry point's configure_console, not tested here)
    assert "/2 [" not in captured.err and "{'" not in captured.out  # no tqdm frame, no dict printer
    steps = [line for line in lines if line.startswith("projector_init step")]
    assert [re.match(r"projector_init step (\d)/2 ", line).group(1) for line in steps] == ["1", "2"]
    assert all(" loss " in line and " eta " in line and len(line) < 160 for line in steps)
    assert any(re.match(r"projector_init done: 2 steps in [\d.]+ s, mean loss [\d.]+$", line) for line in lines)
