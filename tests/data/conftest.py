"""Fixtures of the data tests: a small generated corpus (written under pytest's temporary directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvila_model.data.config import GenerateConfig
from nvila_model.data.generate import run_generate

SCALE = 0.05  # 15 train / 2 val / 2 test records per image subset, 8 / 1 / 2 per video subset


@pytest.fixture(scope="session")
def scale() -> float:
    return SCALE


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_generate(GenerateConfig(scale=SCALE, seed=3), tmp_path_factory.mktemp("raw") / "synth")
