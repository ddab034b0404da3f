"""Device selection (auto | cpu | cuda[:N]) and the one-line refusals of a CUDA request on a host without a GPU."""

from __future__ import annotations

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
    from nvila_model.data.config import DatasetsConfig
    from nvila_model.deltaloss.checkpoint_scorer import CheckpointScorer
    from nvila_model.deltaloss.config import ScoreConfig
    from nvila_model.evaluate import run_eval
    from nvila_model.params import parse
    from nvila_model.quant.config import QuantizeConfig
    from nvila_model.quant.infer import run_infer
    from nvila_model.quant.quantize import run_quantize
    from nvila_model.train.config import EvalConfig
    from tasks.mlflow_model import CHECKPOINT, NVILAPyfunc

    calls = {
        "eval.device": lambda: run_eval(EvalConfig(device="cuda"), DatasetsConfig(), data=tmp_path,
                                        checkpoint=tmp_path, out=tmp_path / "eval"),
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
    assert not (tmp_path / "q").exists() and not (tmp_path / "eval").exists()
    for config, key in ((QuantizeConfig, "quantize"), (ScoreConfig, "score"), (EvalConfig, "eval")):
        with pytest.raises(ValueError, match=f"^params.yaml: {key}.device: 'tpu' is not a device; use auto, cpu, cuda"):
            parse(config, {"device": "tpu"}, f"params.yaml: {key}")
        assert parse(config, {"device": "cuda:1"}).device == "cuda:1"  # the hardware is checked when a stage starts
