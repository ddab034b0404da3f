"""The shipped `quantize` / `finetune` params load into their dataclasses; bad keys and values are refused; CLI help."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from nvila_model.finetune.config import FinetuneConfig
from nvila_model.params import load_config
from nvila_model.quant.config import QuantizeConfig

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_shipped_params_load_and_validate() -> None:
    quantize = load_config("quantize", PARAMS)
    assert isinstance(quantize, QuantizeConfig)
    assert quantize.vision.alpha == 0.5 and quantize.llm.w_bit == 4
    finetune = load_config("finetune", PARAMS)
    assert isinstance(finetune, FinetuneConfig)
    assert (finetune.lora.r, finetune.lora.alpha, finetune.lora.dropout) == (64, 16, 0.05)
    assert finetune.vision_lr_ratio == 0.1


def test_unknown_keys_and_bad_values_are_value_errors(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("quantize:\n  vision: {alfa: 0.5}\n")
    with pytest.raises(ValueError, match=r"quantize\.vision\.alfa: unknown key"):
        load_config("quantize", params)
    params.write_text("quantize:\n  llm: {group_size: 48}\n")
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128"):
        load_config("quantize", params)
    params.write_text("quantize:\n  vision: {enabled: false}\n  llm: {enabled: false}\n")
    with pytest.raises(ValueError, match="nothing to quantize"):
        load_config("quantize", params)


@pytest.mark.parametrize("command", ["quantize", "infer", "finetune"])
def test_cli_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
