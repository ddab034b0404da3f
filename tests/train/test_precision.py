"""`precision: auto` takes bf16 only where it pays; an explicit bf16 runs wherever the hardware has it."""

from __future__ import annotations

import pytest
import torch

from nvila_model.train import precision


def cpu(monkeypatch, *, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


def test_auto_is_fp32_on_a_cpu_whose_bf16_is_only_avx512_bf16(monkeypatch):
    cpu(monkeypatch, avx512_bf16=True, amx=False)
    assert precision.resolve_precision("auto") == "fp32"
    assert precision.resolve_precision("bf16") == "bf16"  # asked for, it runs


def test_auto_is_fp32_on_a_cpu_with_amx_tiles(monkeypatch):
    # measured on such a CPU: a bf16 autocast step 0.63x (tiny) and 0.98x (small) the fp32 step
    cpu(monkeypatch, avx512_bf16=True, amx=True)
    assert precision.resolve_precision("auto") == "fp32"
    assert precision.resolve_precision("bf16") == "bf16"


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    cpu(monkeypatch, avx512_bf16=False, amx=False)
    assert precision.resolve_precision("auto") == "fp32"
    with pytest.raises(ValueError, match="no bf16 support"):
        precision.resolve_precision("bf16")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, has_bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
    assert precision.resolve_precision("auto") == ("bf16" if has_bf16 else "fp32")
