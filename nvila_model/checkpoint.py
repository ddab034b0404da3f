"""One way to load an NVILA checkpoint directory: a training stage, a fine-tune or a quantized export, on a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nvila_model.device import resolve_device

QUANT_KIND = "quantized"  # meta.json `kind` of a directory written by `nvila quantize`
WEIGHTS = "model.safetensors"  # of every NVILA directory, plain or quantized


def is_quantized(path: str | Path) -> bool:
    """Whether `path` is a directory written by `nvila quantize` (its meta.json says kind: quantized)."""
    meta_file = Path(path) / "meta.json"
    return meta_file.is_file() and json.loads(meta_file.read_text()).get("kind") == QUANT_KIND


def is_peer(path: str | Path) -> bool:
    """Whether `path` holds the peer (transformers' LLaVA, `nvila peer train`): config.json model_type llava."""
    config_file = Path(path) / "config.json"
    try:
        return json.loads(config_file.read_text()).get("model_type") == "llava"
    except (OSError, ValueError, AttributeError):
        return False


def quantized_source(path: str | Path) -> str:
    """The checkpoint a quantized directory was made from (meta.json `source_checkpoint`)."""
    return str(json.loads((Path(path) / "meta.json").read_text()).get("source_checkpoint", "unknown"))


def check_nvila_checkpoint(path: str | Path, allow_quantized: bool = True, task: str = "load") -> None:
    """A clear `ValueError` unless `path` is an NVILA checkpoint directory (config.json with model_type nvila) that
    the caller can `task` (a quantized export has no full-precision weights to train or quantize)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: not an NVILA checkpoint (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ValueError(f"{config_file}: cannot be read as a model config ({type(exc).__name__})") from None
    if model_type != "nvila":
        raise ValueError(f"{path}: not an NVILA checkpoint: config.json model_type is {model_type!r}, expected "
                         "'nvila' (the output of a training, fine-tuning or quantize stage)")
    if not allow_quantized and is_quantized(path):
        raise ValueError(f"{path}: already quantized (`nvila quantize` output), so it has no full-precision weights "
                         f"to {task}; use the checkpoint it came from: {quantized_source(path)}")


def load_checkpoint(path: str | Path, device: str | torch.device | None = "auto",
                    dtype: torch.dtype | str = torch.float32, allow_quantized: bool = True,
                    task: str = "load") -> tuple[nn.Module, Any]:
    """(model, processor) of any model directory the pipeline writes: NVILA, plain or quantized, or the peer.

    `device`: a setting for `resolve_device` (auto: cuda when available), or None to leave the weights where loading
    put them (training: the Trainer places the model, and under ZeRO-3 `from_pretrained` partitions it). A plain
    checkpoint loads in `dtype` ("auto": the dtype it was saved in) and eval mode; a quantized export keeps its own
    dtypes and is built on `device`. A missing or corrupt weights file is one `ValueError` naming it.
    """
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.processor import NVILAProcessor

    path = Path(path)
    target = None if device is None else resolve_device(device)
    if is_peer(path):
        from nvila_model.peer.model import load_peer  # imported only for a peer directory

        model, processor = load_peer(path)
        return (model if target is None else model.to(target)), processor
    check_nvila_checkpoint(path, allow_quantized, task)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{weights}: not found; {path} is not a complete NVILA checkpoint directory")
    processor = NVILAProcessor.from_pretrained(path)
    if is_quantized(path):
        from nvila_model.quant.loading import load_quantized

        return load_quantized(path, target or torch.device("cpu")), processor
    try:
        model = NVILAForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    except Exception as exc:  # safetensors, JSON and torch raise their own types for a truncated or corrupt file
        raise ValueError(f"{weights}: cannot be loaded ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    if target is None:
        return model, processor
    return model.to(target).eval(), processor
