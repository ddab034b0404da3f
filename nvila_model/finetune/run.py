"""The fine-tune stage: a stage checkpoint + a LLaVA dataset -> a fine-tuned (LoRA-merged) NVILA checkpoint.

The training loop is the training package's `NVILATrainer` (HF Trainer with one AdamW group per top-level module),
so fine-tuning differs from a training stage only in which parameters train and at which learning rates.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainingArguments, set_seed

from nvila_model.checkpoint import load_checkpoint
from nvila_model.cli import progress_bars
from nvila_model.data.collate import PaddingCollator
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import media_root_for, read_manifest, schema_problem
from nvila_model.device import resolve_device
from nvila_model.finetune.config import MODES, FinetuneConfig
from nvila_model.finetune.memory import PeakMemory, model_state_bytes
from nvila_model.finetune.modes import apply_mode, load_llm_4bit, merge_into_base, merge_lora, module_lrs, qlora_refusal
from nvila_model.manifest import staged_output, write_stage_manifest
from nvila_model.tracking import NullTracker, Tracker
from nvila_model.train.hf_trainer import NVILATrainer, StageCallback
from nvila_model.train.precision import resolve_precision


def valid_records(manifest: str | Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The manifest's records that pass the data package's schema checks, and how many were dropped why."""
    kept, dropped = [], {}
    for record in read_manifest(manifest):
        problem = schema_problem(record)
        if problem is None:
            kept.append(record)
        else:
            dropped[problem] = dropped.get(problem, 0) + 1
    if not kept:
        raise ValueError(f"{manifest}: no record passes the LLaVA schema checks ({dropped})")
    return kept, dropped


def training_args(cfg: FinetuneConfig, out: Path, bf16: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_steps=cfg.max_steps, learning_rate=cfg.lr,
        lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps, save_strategy="no", bf16=bf16, seed=cfg.seed, data_seed=cfg.seed,
        report_to="none", remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress_bars())


def export(model: Any, processor: Any, out: Path, checkpoint: Path) -> None:
    """Save the LoRA adapter (when there is one) under `adapter/`, then the merged model as a plain checkpoint: LoRA
    merges in place, QLoRA into a full-precision copy of `checkpoint` (never into the NF4 bytes)."""
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        model.language_model.save_pretrained(str(out / "adapter"))
        if getattr(model.language_model.get_base_model(), "is_loaded_in_4bit", False):
            base, _ = load_checkpoint(checkpoint, "cpu", allow_quantized=False)
            model = merge_into_base(model, base, out / "adapter")
    merge_lora(model)
    model.requires_grad_(True)
    model.save_pretrained(str(out))
    processor.save_pretrained(out)


def run_finetune(cfg: FinetuneConfig, checkpoint: str | Path, data: str | Path, output: str | Path,
                 tracker: Tracker | None = None) -> Path:
    """Fine-tune `checkpoint` on the LLaVA manifest `data` in `cfg.mode`; writes the merged model, meta.json and
    manifest.json to `output` (replacing it only once complete)."""
    tracker = tracker or NullTracker()
    checkpoint, data, final = Path(checkpoint), Path(data), Path(output)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    model, processor = load_checkpoint(checkpoint, device=None, allow_quantized=False, task="fine-tune")
    records, dropped = valid_records(data)
    total_params = sum(p.numel() for p in model.parameters())
    qlora = MODES[cfg.mode][1] == "qlora"
    if qlora:
        if reason := qlora_refusal():
            raise ValueError(reason)
        model.language_model = load_llm_4bit(checkpoint, model.config.text_config, resolve_device("auto"))
    trainable = apply_mode(model, cfg)
    lrs = module_lrs(model, cfg)
    state_bytes = model_state_bytes(model)
    precision = resolve_precision(cfg.precision)
    dataset = LlavaDataset(records, media_root_for(data, None, f"the media root of {data}"), processor,
                           max_length=cfg.max_length)
    callback = StageCallback(tracker, samples_per_step=cfg.batch_size * cfg.grad_accum, name="finetune",
                             progress_lines=not progress_bars())
    with staged_output(final) as out:
        # The Trainer's output_dir stays empty (fine-tuning saves no Trainer checkpoints); it lives in the staging
        # folder so nothing is written beside the output.
        args = training_args(cfg, out, precision == "bf16")
        trainer = NVILATrainer(model=model, args=args, train_dataset=dataset,
                               data_collator=PaddingCollator(processor.pad_id), module_lrs=lrs, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # without a tqdm bar, StageCallback prints the progress lines
        tracker.log_params({f"finetune.{k}": v for k, v in asdict(cfg).items()})
        started = time.perf_counter()
        with PeakMemory() as memory:
            result = trainer.train()
        seconds = time.perf_counter() - started
        export(model, processor, out, checkpoint)
        shutil.rmtree(out / "trainer", ignore_errors=True)
        write_meta(out, cfg, checkpoint, data, trainer, result, callback, memory, seconds,
                   {"trainable": trainable, "total_params": total_params, "lrs": lrs, "state_bytes": state_bytes,
                    "precision": precision, "records": len(records), "dropped": dropped,
                    "skipped": len(dataset.failures),
                    "llm_base": "bitsandbytes nf4 (merged into the fp32 base)" if qlora else "fp32"})
    tracker.log_metrics({"train_seconds": seconds, "final_loss": result.training_loss,
                         "peak_memory_bytes": float(memory.peak_bytes), "trainable_params": float(trainable["total"])})
    return final


def write_meta(out: Path, cfg: FinetuneConfig, checkpoint: Path, data: Path, trainer: Any, result: Any,
               callback: StageCallback, memory: PeakMemory, seconds: float, facts: dict[str, Any]) -> None:
    """meta.json, log_history.json and manifest.json of a fine-tuned checkpoint."""
    trainable, total_params = facts["trainable"], facts["total_params"]
    meta = {"kind": "nvila-finetuned", "mode": cfg.mode, "vision": MODES[cfg.mode][0], "llm": MODES[cfg.mode][1],
            "source_checkpoint": str(checkpoint), "trainable_params": trainable, "total_params": total_params,
            "trainable_share": round(trainable["total"] / total_params, 6), "module_lrs": facts["lrs"],
            "precision": facts["precision"], "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(trainer.state.global_step, 1), 4),
            "peak_memory_bytes": memory.peak_bytes, "peak_memory_kind": memory.kind,
            "model_state_bytes": facts["state_bytes"], "final_loss": result.training_loss,
            "num_records": facts["records"], "dropped_records": facts["dropped"], "skipped_records": facts["skipped"],
            "lora_merged": MODES[cfg.mode][1] in ("lora", "qlora"), "llm_base": facts["llm_base"]}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    (out / "log_history.json").write_text(json.dumps(callback.history, indent=2))
    write_stage_manifest(out, "finetune", asdict(cfg), inputs={"checkpoint": checkpoint, "data": data},
                         trainable_params=trainable)
