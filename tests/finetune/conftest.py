"""Fixtures of the fine-tuning tests: the tiny checkpoint and manifest that the quantization tests build too."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("tiny_assets", Path(__file__).parents[1] / "quant" / "tiny_assets.py")
tiny_assets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_assets)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_assets.build_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return tiny_assets.build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture()
def tiny_model():
    """A fresh tiny NVILA model (overrides the root fixture so fine-tuning tests own their tokenizer)."""
    model, _ = tiny_assets.tiny_model_and_processor()
    return model
