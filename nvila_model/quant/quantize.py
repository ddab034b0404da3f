"""The quantize stage: SmoothQuant W8A8 vision tower + AWQ W4A16 LLM of an NVILA checkpoint, saved with meta.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from nvila_model.checkpoint import QUANT_KIND, load_checkpoint
from nvila_model.device import resolve_device
from nvila_model.manifest import staged_output, write_stage_manifest
from nvila_model.params import to_dict
from nvila_model.quant import awq_adapter, calib, smoothquant, w8a8
from nvila_model.quant.config import QuantizeConfig
from nvila_model.tracking import NullTracker, Tracker

WEIGHTS = "model.safetensors"


def tensor_bytes(tensors: dict[str, torch.Tensor], prefix: str = "") -> int:
    """Bytes of the tensors whose key starts with `prefix`."""
    return sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith(prefix))


def plain_state(model: nn.Module, skip_modules: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without the modules in `skip_modules`, one copy per storage; returns (tensors, alias -> key)."""
    tensors, aliases, seen = {}, {}, {}
    for key, value in model.state_dict().items():
        if any(key.startswith(m + ".") for m in skip_modules) or not isinstance(value, torch.Tensor):
            continue
        ptr = (value.data_ptr(), value.shape, value.dtype)
        if value.numel() and ptr in seen:
            aliases[key] = seen[ptr]
            continue
        seen[ptr] = key
        tensors[key] = value.detach().contiguous()
    return tensors, aliases


def quantize_vision(model: nn.Module, samples: list[dict], cfg: QuantizeConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Smooth and W8A8-quantize the vision tower in place; returns (meta, tensors to save for its Linears)."""
    vcfg = cfg.vision
    tower = model.vision_tower
    backend = w8a8.resolve_backend(vcfg.backend, next(model.parameters()).device)
    meta: dict[str, Any] = {"method": "smoothquant-w8a8" if vcfg.smooth else "w8a8", "backend": backend,
                            "weights": "int8, symmetric, per output channel",
                            "activations": f"int8, dynamic, {w8a8.activation_granularity(backend)}"}
    if vcfg.smooth:
        num_tiles: list[int] = []
        act_absmax = smoothquant.collect_act_absmax(tower, lambda: num_tiles.append(calib.run_vision(model, samples)))
        max_scales = smoothquant.apply_smoothing(tower, act_absmax, vcfg.alpha)
        unreached = sorted(g.name for g in smoothquant.smooth_groups(tower) if g.name not in max_scales)
        meta.update(alpha=vcfg.alpha, smoothed=sorted(max_scales), not_run_so_unsmoothed=unreached,
                    max_smoothing_scale=max(max_scales.values()),
                    calib_samples=len(samples), calib_tiles=num_tiles[0], **calib.media_kinds(samples))
    names = w8a8.target_linear_names(tower, vcfg.targets)
    saved: dict[str, torch.Tensor] = {}
    if backend == "torchao":  # torchao tensors do not go into safetensors: keep the smoothed fp32, quantize on load
        saved = {f"vision_tower.{n}.{p}": t.detach().clone() for n in names
                 for p, t in tower.get_submodule(n).named_parameters()}
    w8a8.quantize_linears(tower, names, backend)
    if backend == "torch_ao":
        saved = w8a8.export_int8(tower, names, "vision_tower.")
    meta.update(quantized_layers=names, stored_as="int8" if backend == "torch_ao" else "fp32, quantized on load")
    return meta, saved


def quantize_model(model: nn.Module, processor: Any, cfg: QuantizeConfig, manifest: str | Path
                   ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Quantize `model` in place as `cfg` says, calibrating on the records of `manifest` (media beside it, or where
    its stage manifest says); returns (meta, the tensors that save it)."""
    meta: dict[str, Any] = {"kind": QUANT_KIND, "vision": None, "llm": None}
    before, _ = plain_state(model, [])
    start = time.perf_counter()
    saved: dict[str, torch.Tensor] = {}
    skip: list[str] = []
    if cfg.vision.enabled:
        samples = calib.calibration_samples(manifest, None, processor, cfg.vision.num_calib_samples,
                                            cfg.seed, need_media=True)
        meta["vision"], saved = quantize_vision(model, samples, cfg)
        skip = [f"vision_tower.{n}" for n in meta["vision"]["quantized_layers"]]
    if cfg.llm.enabled:
        texts = calib.calibration_samples(manifest, None, processor, cfg.llm.num_calib_samples, cfg.seed)
        tokens = calib.text_token_lists(texts, (model.config.image_token_id, model.config.video_token_id))
        llm = cfg.llm
        meta["llm"] = awq_adapter.quantize_lm(
            model.language_model, tokens, w_bit=llm.w_bit, group_size=llm.group_size, zero_point=llm.zero_point,
            num_calib_samples=llm.num_calib_samples, calib_seq_len=llm.calib_seq_len, apply_clip=llm.apply_clip)
    meta["seconds"] = round(time.perf_counter() - start, 2)
    tensors, aliases = plain_state(model, skip)
    tensors.update(saved)
    meta["tied"] = aliases
    meta["not_quantized"] = ["vision embeddings and LayerNorms", "projector", "LLM embeddings, norms, lm_head"]
    meta["sizes"] = size_report(before, tensors)
    return meta, tensors


def run_quantize(cfg: QuantizeConfig, checkpoint: str | Path, output: str | Path, calib_manifest: str | Path,
                 tracker: Tracker | None = None) -> Path:
    """Quantize `checkpoint` into `output` (config.json, model.safetensors, processor, meta.json, manifest.json),
    calibrating on the records of `calib_manifest`."""
    checkpoint, output, manifest = Path(checkpoint), Path(output), Path(calib_manifest)
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device, "quantize.device")
    model, processor = load_checkpoint(checkpoint, device, allow_quantized=False, task="quantize")
    meta, tensors = quantize_model(model, processor, cfg, manifest)
    meta |= {"source_checkpoint": str(checkpoint), "device": str(device)}
    with staged_output(output) as tmp:
        save_quantized(model, processor, tensors, meta, tmp)
        write_stage_manifest(tmp, "quantize", to_dict(cfg), inputs={"checkpoint": checkpoint, "calib": manifest},
                             sizes=meta["sizes"], device=str(device))
    tracker = tracker or NullTracker()
    tracker.log_metrics({"quantize_seconds": meta["seconds"], **{f"size_ratio_{part}": float(v["ratio"])
                                                                 for part, v in meta["sizes"].items()}})
    return output


def size_report(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tensor bytes before/after, overall and for the vision tower and the LLM."""
    report = {}
    for part, prefix in (("total", ""), ("vision_tower", "vision_tower."), ("language_model", "language_model.")):
        b, a = tensor_bytes(before, prefix), tensor_bytes(after, prefix)
        report[part] = {"before_bytes": b, "after_bytes": a, "ratio": round(b / max(a, 1), 3)}
    return report


def save_quantized(model: nn.Module, processor: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   output: Path) -> None:
    """Write the quantized directory; records the on-disk weight file size in meta.json."""
    output.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(output))
    processor.save_pretrained(output)
    host = {k: v.to("cpu") for k, v in tensors.items()}  # a model quantized on the GPU is saved from host memory
    save_file(host, str(output / WEIGHTS), metadata={"format": "pt", "kind": QUANT_KIND})
    source = Path(meta["source_checkpoint"])
    meta["sizes"]["disk"] = {"before_bytes": sum(p.stat().st_size for p in source.glob("*.safetensors")),
                             "after_bytes": (output / WEIGHTS).stat().st_size}
    meta["sizes"]["disk"]["ratio"] = round(meta["sizes"]["disk"]["before_bytes"] /
                                           max(meta["sizes"]["disk"]["after_bytes"], 1), 3)
    (output / "meta.json").write_text(json.dumps(meta, indent=2))
