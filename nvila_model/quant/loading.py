"""Read a quantized NVILA directory back (the format `run_quantize` writes), on a device; `load_checkpoint` calls it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from nvila_model.checkpoint import QUANT_KIND, WEIGHTS, is_quantized
from nvila_model.quant import awq_adapter, w8a8

VARIANTS = ("auto", "fp32", "bf16", "quantized")  # auto: quantized for a `nvila quantize` directory, else fp32


def read_quant_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of a quantized directory; anything else is a `ValueError`."""
    if not is_quantized(path):
        raise ValueError(f"{path}: not a quantized NVILA directory (meta.json kind is not {QUANT_KIND!r}); "
                         "run `nvila quantize` first")
    return json.loads((Path(path) / "meta.json").read_text())


def load_quantized(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The quantized model saved by `run_quantize`, in eval mode on `device`, ready for `generate()`.

    A torch_ao (CPU kernel) export refuses a CUDA device; a torchao export is quantized on `device` at load; the AWQ
    LLM runs autoawq's kernels for `device` (dequantize + matmul on a CPU, even on a host that has a GPU).
    """
    from nvila_model.config import NVILAConfig
    from nvila_model.modeling import NVILAForConditionalGeneration

    path, device = Path(path), torch.device(device)
    meta = read_quant_meta(path)
    vision = meta["vision"]
    if vision:
        w8a8.resolve_backend(vision["backend"], device)  # refuses a backend without kernels on `device`, first
    model = NVILAForConditionalGeneration(NVILAConfig.from_pretrained(str(path))).eval()
    if meta["llm"]:
        awq_adapter.prepare_for_loading(model.language_model, meta["llm"], device)
    tensors = load_file(str(path / WEIGHTS))
    int8 = {k: v for k, v in tensors.items() if w8a8.is_w8a8_key(k)}
    plain = {k: v for k, v in tensors.items() if not w8a8.is_w8a8_key(k)}
    plain.update({alias: plain[key] for alias, key in meta.get("tied", {}).items()})
    missing, unexpected = model.load_state_dict(plain, strict=False)
    expected_missing = set()
    if vision and vision["backend"] == "torch_ao":
        expected_missing = {f"vision_tower.{n}.{p}" for n in vision["quantized_layers"] for p in ("weight", "bias")}
    if set(missing) - expected_missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model: missing {sorted(set(missing) - expected_missing)}"
                         f", unexpected {sorted(unexpected)}")
    model.to(device)
    if vision:
        if vision["backend"] == "torch_ao":
            w8a8.import_int8(model.vision_tower, vision["quantized_layers"], "vision_tower.", int8)
        else:
            w8a8.quantize_linears(model.vision_tower, vision["quantized_layers"], vision["backend"])
    return model.eval()


def load_variant(path: str | Path, variant: str = "auto", device: str | torch.device = "auto") -> tuple[nn.Module, Any]:
    """(model, processor) for `variant` on `device` (auto: cuda when available): fp32 or bf16 of an NVILA checkpoint,
    or a quantized directory (`auto` picks by what `path` holds)."""
    from nvila_model.checkpoint import load_checkpoint, quantized_source

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} unknown; choose one of {VARIANTS}")
    quantized = is_quantized(path)
    if variant == "auto":
        variant = "quantized" if quantized else "fp32"
    if variant == "quantized" and not quantized:
        raise ValueError(f"{path}: variant quantized needs a `nvila quantize` directory")
    if variant != "quantized" and quantized:
        raise ValueError(f"{path}: a quantized directory holds no {variant} weights; infer from it with --variant "
                         f"quantized (or auto, the default), or pass --checkpoint {quantized_source(path)} "
                         f"(the checkpoint it came from) for {variant}")
    return load_checkpoint(path, device, dtype=torch.bfloat16 if variant == "bf16" else torch.float32, task="run")
