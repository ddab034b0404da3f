"""Shared fixtures: a tiny tokenizer, processor and model built from config (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

WORDS = ["What colour is the square?", "red", "green", "blue", "How many circles are there?", "1", "2", "3", "4",
         "Which way does the dot move?", "left", "right", "up", "down", "Read the word.", "cat", "dog"]


@pytest.fixture(scope="session")
def tokenizer():
    from nvila_model.tokenizer import train_tokenizer

    return train_tokenizer(WORDS * 3, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_config():
    from nvila_model.presets import build_config

    return build_config("tiny")


@pytest.fixture(scope="session")
def processor(tokenizer, tiny_config):
    from nvila_model.processor import NVILAProcessor

    return NVILAProcessor(tokenizer, tiny_config)


@pytest.fixture()
def tiny_model(tiny_config):
    from nvila_model.modeling import NVILAForConditionalGeneration

    torch.manual_seed(0)
    return NVILAForConditionalGeneration(tiny_config).eval()
