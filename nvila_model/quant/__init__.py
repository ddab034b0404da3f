"""Quantized deployment: SmoothQuant W8A8 vision tower, AWQ W4A16 LLM, `load_quantized(dir)` and inference."""

from typing import Any

__all__ = ["load_quantized", "run_quantize"]


def __getattr__(name: str) -> Any:
    """Import lazily, so `nvila --help` does not pay for torch and autoawq."""
    if name == "load_quantized":
        from nvila_model.quant.loading import load_quantized

        return load_quantized
    if name == "run_quantize":
        from nvila_model.quant.quantize import run_quantize

        return run_quantize
    raise AttributeError(f"module 'nvila_model.quant' has no attribute {name!r}")
