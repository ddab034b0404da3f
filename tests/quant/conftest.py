"""Fixtures of the quantization tests: a tiny NVILA checkpoint and a LLaVA manifest with images and videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_assets import build_tiny_checkpoint, build_tiny_data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
