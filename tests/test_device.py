"""Device selection (auto | cpu | cuda[:N]) and the one-line refusals of a CUDA request on a host without a GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nvila_model.device import resolve_device

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a host without a GPU")


def one_line_refusal(excinfo: pytest.ExceptionInfo, setting: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(setting) and "no CUDA GPU" in message, message


def test_auto_picks_cuda_only_when_a_gpu_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="has 1 CUDA GPU"):
        resolve_device("cuda:1", "eval.device")


def test_bad_and_unavailable_devices_are_one_line_errors() -> None:
    for requested in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError) as excinfo:
            resolve_device(requested, "eval.device")
        one_line_refusal(excinfo, "eval.device")
    with pytest.raises(ValueError, match="'gpu' is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", "quantize.device")


def test_every_model_entry_point_refuses_cuda_here(tmp_path: Path) -> None:
    from nvila_model.deltaloss.checkpoint_scorer import CheckpointScorer
    from nvila_model.deltaloss.config import ScoreConfig
    from nvila_model.evaluate import EvalConfig, run_eval
    from nvila_model.quant.config import QuantizeConfig
    from nvila_model.quant.infer import run_infer
    from nvila_model.quant.quantize import run_quantize
    from tasks.mlflow_model import CHECKPOINT, NVILAPyfunc

    calls = {
        "eval.device": lambda: run_eval(EvalConfig(checkpoint=str(tmp_path), device="cuda")),
        "quantize.device": lambda: run_quantize(QuantizeConfig(device="cuda"), tmp_path, tmp_path / "q", tmp_path),
        "device": lambda: run_infer(tmp_path, "hi", device="cuda"),
        "score.device": lambda: CheckpointScorer(tmp_path, None, device="cuda"),
        "model_config.device": lambda: NVILAPyfunc().load_context(
            SimpleNamespace(artifacts={CHECKPOINT: str(tmp_path)}, model_config={"device": "cuda"})),
    }
    for setting, call in calls.items():
        with pytest.raises(ValueError) as excinfo:
            call()
        one_line_refusal(excinfo, setting)
    assert not (tmp_path / "q").exists()
    for config, setting in ((QuantizeConfig(), "quantize.device"), (ScoreConfig(), "score.device")):
        with pytest.raises(ValueError, match=f"{setting}: 'tpu' is not a device"):
            dataclasses.replace(config, device="tpu").validate()
