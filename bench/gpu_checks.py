"""The GPU paths of the pipeline, one function per check, for bench/gpu_check.py.

Each check takes the shared `Workspace`, runs a real path of the library on `ws.device` and returns its figures; it
raises when the path fails or a figure is out of bounds. Criteria that only a GPU can meet (flash-attn installed,
the torchao W8A8 backend, autoawq's GPU kernels, QLoRA's memory saving) are asserted when `ws.device` is CUDA.
"""

from __future__ import annotations

import functools
import gc
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from common import make_corpus

from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.params import parse
from nvila_model.train.config import MODULES, ModelParams, StageConfig

REPO = Path(__file__).resolve().parents[1]
ZERO3 = REPO / "configs" / "deepspeed" / "zero3.json"


@dataclass
class Workspace:
    """What every check shares: a generated corpus, its tokenizer, the model preset, the device, the budget."""

    root: Path
    device: torch.device
    preset: str
    steps: int
    batch_size: int
    data: Path
    tokenizer: Path

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def half(self) -> str:
        """bf16 (a GPU's, or a CPU's that has it), else fp32 for a CPU dry run."""
        from nvila_model.train.precision import bf16_supported

        return "bf16" if self.cuda or bf16_supported() else "fp32"

    def datasets(self) -> DatasetsConfig:
        """One dataset, `synth`: the generated corpus `data` (given to the stages as their data folder)."""
        return parse(DatasetsConfig, {"entries": {"synth": {}}})

    def records(self, split: str = "train") -> list[dict[str, Any]]:
        return DatasetRegistry(self.datasets(), self.data).records("synth", split)

    def stage(self, name: str, precision: str, **changes: Any) -> StageConfig:
        """Stage settings shared by the training checks: every module trains, same seed, data and steps."""
        lrs = {"vision_tower": 2e-5, "projector": 2e-4, "language_model": 2e-4}
        logging_steps = max(1, self.steps // 5)
        return StageConfig(train_modules=list(MODULES), lr=lrs, datasets=["synth"], batch_size=self.batch_size,
                           max_steps=self.steps, logging_steps=logging_steps, save_steps=logging_steps * 10**6,
                           warmup_ratio=0.0, precision=precision, max_length=1024, resume=False, **changes)

    def build(self, cfg: StageConfig) -> Any:
        """A fresh model of the preset with the corpus's tokenizer, as the first training stage builds it."""
        from nvila_model.train.stage import build_model

        return build_model(cfg, ModelParams(preset=self.preset), tokenizer_dir=self.tokenizer)

    def checkpoint(self) -> Path:
        """The bf16 check's trained stage; a freshly built model when that check did not run or failed."""
        trained = self.root / "train_bf16"
        if (trained / "meta.json").is_file():
            return trained
        fresh = self.root / "fresh"
        if not (fresh / "config.json").is_file():
            model, processor = self.build(self.stage("fresh", "fp32"))
            model.save_pretrained(str(fresh))
            processor.save_pretrained(fresh)
        return fresh


def setup(root: Path, device: torch.device, preset: str, steps: int, batch_size: int) -> Workspace:
    from nvila_model.presets import build_config

    vocab = min(1024, build_config(preset).text_config.vocab_size)
    data, tokenizer = make_corpus(root / "corpus", scale=0.1, vocab_size=vocab)
    return Workspace(root, device, preset, steps, batch_size, data, tokenizer)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_run(ws: Workspace, name: str, cfg: StageConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Train with the library's `fit`; the throughput is the whole run's, from its meta.json (warm-up included)."""
    from nvila_model.train.stage import fit

    free_memory()
    out = fit(name, cfg, lambda: ws.build(cfg), records, {}, ws.root / name, ws.root / "work" / name)
    meta = json.loads((out / "meta.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"{name}: no finite training loss logged ({losses})")
    samples_per_s = meta["global_steps"] * cfg.batch_size * cfg.grad_accum / max(meta["train_seconds"], 1e-9)
    return {"path": meta["precision"], "samples_per_s": samples_per_s,
            "first_loss": losses[0], "final_loss": losses[-1], "steps": meta["global_steps"], "meta": meta}


def check_train_precisions(ws: Workspace) -> dict[str, Any]:
    """bf16 against torchao float8 (pad_inner_dim) on the same model init, data order and steps. (A CPU dry run
    without bf16 compares against fp32.)"""
    records = ws.records()
    base_precision = ws.half
    base = train_run(ws, "train_bf16", ws.stage("train_bf16", base_precision), records)
    fp8 = train_run(ws, "train_fp8", ws.stage("train_fp8", "fp8"), records)
    if ws.cuda and fp8["path"] != "fp8-gpu":
        raise AssertionError(f"fp8 ran as {fp8['path']}, not the GPU float8 matmuls")
    gap = abs(fp8["final_loss"] - base["final_loss"]) / base["final_loss"]
    if gap > 0.1 or base["final_loss"] >= base["first_loss"]:
        raise AssertionError(f"final loss {base_precision} {base['final_loss']:.4f}, fp8 {fp8['final_loss']:.4f} "
                             f"(first {base['first_loss']:.4f}): fp8 must track it within 10% and it must learn")
    return {"baseline": base["path"], "baseline_samples_per_s": base["samples_per_s"],
            "fp8_samples_per_s": fp8["samples_per_s"], "fp8_speedup": fp8["samples_per_s"] / base["samples_per_s"],
            "baseline_final_loss": base["final_loss"], "fp8_final_loss": fp8["final_loss"], "fp8_path": fp8["path"],
            "fp8_layers": fp8["meta"]["fp8_layers"], "steps": base["steps"],
            "batch_layout": base["meta"]["batch_layout"]}


def per_sample_losses(model: Any, collator: Any, samples: list[dict[str, Any]]) -> torch.Tensor:
    from nvila_model.data.collate import model_inputs
    from nvila_model.data.collate import per_sample_losses as losses_of

    batch = collator(samples)
    inputs = {k: v.to(ws_device(model)) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items()}
    with torch.no_grad():
        losses = losses_of(model(**inputs).logits.float().cpu(), batch)
    order = [batch["ids"].index(s["id"]) for s in samples]
    return losses[order]


def ws_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def check_flash_varlen(ws: Workspace) -> dict[str, Any]:
    """One packed row through flash-attn's varlen kernel, and through sdpa_varlen on the GPU, gives each sample's own
    (SDPA, unpacked) loss; as a control, the same row without boundaries (one sequence) must not."""
    import flash_attn  # the `gpu` extra; the error names it when missing
    from transformers import modeling_flash_attention_utils as fa_utils

    from nvila_model.checkpoint import load_checkpoint
    from nvila_model.data.collate import FLASH_KWARGS, PackingCollator, PaddingCollator
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.train.stage import make_collator

    model, processor = load_checkpoint(ws.checkpoint(), ws.device, dtype=torch.bfloat16)
    dataset = LlavaDataset(ws.records("val")[:12], None, processor, max_length=1024)
    samples = [s for s in (dataset[i] for i in range(len(dataset))) if s is not None]
    model.set_attn_implementation("sdpa")
    alone = torch.cat([per_sample_losses(model, PaddingCollator(processor.pad_id), [s]) for s in samples])
    model.set_attn_implementation("sdpa_varlen")
    sdpa_varlen = per_sample_losses(model, make_collator(ws.stage("x", "bf16"), processor.pad_id, "sdpa_varlen")[0],
                                    samples)
    calls = []
    real = flash_attn.flash_attn_varlen_func

    @functools.wraps(real)  # transformers reads the kernel's signature to pick the keyword arguments it passes
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    def one_sequence(batch_samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = {k: v for k, v in PackingCollator()(batch_samples).items() if k not in FLASH_KWARGS}
        return batch | {"position_ids": torch.arange(batch["input_ids"].shape[1])[None]}

    flash_attn.flash_attn_varlen_func, fa_utils._loaded_implementation = counted, None  # re-imported on next use
    try:
        model.set_attn_implementation("flash_attention_2")
        collator, layout = make_collator(ws.stage("x", "bf16"), processor.pad_id, "flash_attention_2")
        flash = per_sample_losses(model, collator, samples)
        varlen_calls = len(calls)
        crossing = per_sample_losses(model, one_sequence, samples)
    finally:
        flash_attn.flash_attn_varlen_func, fa_utils._loaded_implementation = real, None
    diff_flash, diff_sdpa = float((flash - alone).abs().max()), float((sdpa_varlen - alone).abs().max())
    diff_crossing = float((crossing - alone).abs().max())
    if not varlen_calls or max(diff_flash, diff_sdpa) > 0.05 or diff_crossing <= 0.05:
        raise AssertionError(f"flash varlen calls {varlen_calls}, max |loss - per-sample loss| flash {diff_flash:.4f}, "
                             f"sdpa_varlen {diff_sdpa:.4f} (must be <= 0.05), one sequence without boundaries "
                             f"{diff_crossing:.4f} (must be > 0.05)")
    return {"samples": len(samples), "varlen_calls": varlen_calls, "max_abs_diff_flash_vs_alone": diff_flash,
            "max_abs_diff_sdpa_varlen_vs_alone": diff_sdpa, "max_abs_diff_without_boundaries": diff_crossing,
            "mean_loss": float(alone.mean()), "layout": layout}


def check_eval_generate(ws: Workspace) -> dict[str, Any]:
    """The eval stage (batched greedy generation, prefill and decode timing) and `nvila infer` on `ws.device`."""
    from nvila_model.evaluate import run_eval
    from nvila_model.quant.infer import run_infer
    from nvila_model.train.config import EvalConfig

    cfg = EvalConfig(datasets=["synth"], limit_per_subset=4, decode_tokens=32, device=str(ws.device))
    metrics = run_eval(cfg, ws.datasets(), data=ws.data, checkpoint=ws.checkpoint(), out=ws.root / "eval")
    device = json.loads((ws.root / "eval" / "manifest.json").read_text())["device"]
    image = next(r["image"] for r in ws.records("test") if "image" in r)
    answer = run_infer(ws.checkpoint(), "What colour is the shape?", "bf16", image=image, max_new_tokens=8,
                       device=str(ws.device))
    if device.split(":")[0] != ws.device.type or not metrics["num_samples"]:
        raise AssertionError(f"eval ran on {device} with {metrics['num_samples']} samples")
    return {"device": device, "num_samples": metrics["num_samples"], "acc_mean": metrics["acc_mean"],
            "prefill_ms": metrics["prefill_ms"], "decode_tokens_per_s": metrics["decode_tokens_per_s"],
            "eval_seconds": metrics["eval_seconds"], "infer_answer": answer}


def check_quantized_inference(ws: Workspace) -> dict[str, Any]:
    """W8A8 vision tower (torchao per-token int8 on CUDA) and AWQ W4A16 LLM quantized on `ws.device`: TTFT
    (prefill) and decode tokens/s against fp32 and bf16 of the same checkpoint."""
    from nvila_model.checkpoint import load_checkpoint
    from nvila_model.evaluate import efficiency
    from nvila_model.quant.config import LLMW4A16Config, QuantizeConfig, VisionW8A8Config
    from nvila_model.quant.quantize import run_quantize

    checkpoint, manifest = ws.checkpoint(), ws.data / "train.jsonl"
    text = json.loads((checkpoint / "config.json").read_text())["text_config"]
    group = 128 if text["hidden_size"] % 128 == 0 and text["intermediate_size"] % 128 == 0 else 32
    cfg = QuantizeConfig(device=str(ws.device), num_threads=torch.get_num_threads(),
                         vision=VisionW8A8Config(num_calib_samples=16),
                         llm=LLMW4A16Config(group_size=group, num_calib_samples=16, calib_seq_len=256))
    vision_only = run_quantize(replace(cfg, llm=replace(cfg.llm, enabled=False)), checkpoint,
                               ws.root / "w8a8", manifest)
    both = run_quantize(cfg, checkpoint, ws.root / "w8a8_w4a16", manifest)
    meta = json.loads((both / "meta.json").read_text())
    if ws.cuda and (meta["vision"]["backend"] != "torchao" or meta["llm"]["kernels"] == "dequantize+matmul"):
        raise AssertionError(f"GPU quantization took backend {meta['vision']['backend']}, AWQ kernels "
                             f"{meta['llm']['kernels']}")
    records = ws.records("test")
    variants = {"fp32": (checkpoint, torch.float32), "bf16": (checkpoint, torch.bfloat16),
                "w8a8_vision": (vision_only, torch.float32), "w8a8_w4a16": (both, torch.float32)}
    figures: dict[str, Any] = {"vision_backend": meta["vision"]["backend"], "awq_kernels": meta["llm"]["kernels"],
                               "disk_ratio": meta["sizes"]["disk"]["ratio"]}
    for name, (path, dtype) in variants.items():
        free_memory()
        model, processor = load_checkpoint(path, ws.device, dtype=dtype)
        timing = efficiency(model, processor, records, samples=4, decode_tokens=32)
        figures[f"{name}_ttft_ms"] = timing["prefill_ms"]
        figures[f"{name}_decode_tokens_per_s"] = timing["decode_tokens_per_s"]
        del model
    return figures


def check_qlora_memory(ws: Workspace) -> dict[str, Any]:
    """LoRA on the fp32 LLM against QLoRA on the NF4 LLM: peak memory of the whole fine-tune, and its export."""
    from nvila_model.finetune.config import FinetuneConfig
    from nvila_model.finetune.run import run_finetune

    figures: dict[str, Any] = {}
    for mode in ("lora", "qlora"):
        free_memory()
        cfg = FinetuneConfig(mode=mode, batch_size=ws.batch_size, max_steps=max(2, ws.steps // 3), lr=1e-4,
                             logging_steps=1, num_threads=torch.get_num_threads())
        out = run_finetune(cfg, ws.checkpoint(), ws.data / "train.jsonl", ws.root / f"ft_{mode}")
        meta = json.loads((out / "meta.json").read_text())
        peak = torch.cuda.max_memory_allocated() if ws.cuda else meta["peak_memory_bytes"]
        figures |= {f"{mode}_peak_mb": peak / 2**20, f"{mode}_state_mb": meta["model_state_bytes"] / 2**20,
                    f"{mode}_final_loss": meta["final_loss"]}
    if figures["qlora_state_mb"] >= figures["lora_state_mb"] or (
            ws.cuda and figures["qlora_peak_mb"] >= figures["lora_peak_mb"]):
        raise AssertionError(f"QLoRA does not save memory: {figures}")
    return figures


def zero3_child(ws: Workspace) -> None:
    """Run in its own process (a DeepSpeed config stays registered for the life of a process): one ZeRO-3 stage
    on the records plus text-only ones, so the blank-tile path runs too."""
    text = [{"from": "human", "value": "Say the word dog."}, {"from": "gpt", "value": "dog"}]
    records = ws.records() + [{"id": f"text-{i}", "conversations": text} for i in range(64)]
    train_run(ws, "zero3", ws.stage("zero3", ws.half, deepspeed=str(ZERO3)), records)
