"""The fine-tune stage: a stage checkpoint + a LLaVA dataset -> a fine-tuned (LoRA-merged) NVILA checkpoint.

The training loop is the training package's `NVILATrainer` (HF Trainer with one AdamW group per top-level module),
so fine-tuning differs from a training stage only in which parameters train and at which learning rates.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from nvila_model.data.collate import PaddingCollator
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import media_root_for, read_manifest, schema_problem
from nvila_model.finetune.config import MODES, FinetuneConfig
from nvila_model.finetune.memory import PeakMemory, model_state_bytes
from nvila_model.finetune.modes import apply_mode, merge_lora, module_lrs
from nvila_model.manifest import write_stage_manifest
from nvila_model.tracking import NullTracker, Tracker
from nvila_model.train.hf_trainer import NVILATrainer, StageCallback
from nvila_model.train.precision import resolve_precision


class FinetuneCallback(StageCallback):
    """The training stages' callback (throughput, log forwarding) without their Trainer checkpoint at the end:
    fine-tuning exports its own merged model instead."""

    def on_step_end(self, args, state, control, **kwargs):
        return control


def load_for_finetune(checkpoint: str | Path) -> tuple[Any, Any]:
    """(model, processor) of any stage's NVILA checkpoint; anything else is a clear `ValueError`."""
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.processor import NVILAProcessor
    from nvila_model.quant.quantize import check_nvila_checkpoint

    check_nvila_checkpoint(checkpoint, task="fine-tune")
    model = NVILAForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32)
    return model, NVILAProcessor.from_pretrained(checkpoint)


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
        report_to="none", remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)


def export(model: Any, processor: Any, out: Path) -> None:
    """Save the LoRA adapter (when there is one) under `adapter/`, then the merged model as a plain checkpoint."""
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        model.language_model.save_pretrained(str(out / "adapter"))
    merge_lora(model)
    model.requires_grad_(True)
    model.save_pretrained(str(out))
    processor.save_pretrained(out)


def run_finetune(cfg: FinetuneConfig, checkpoint: str | Path | None = None, data: str | Path | None = None,
                 output: str | Path | None = None, tracker: Tracker | None = None) -> Path:
    """Fine-tune `checkpoint` on `data` in `cfg.mode`; writes the merged model, meta.json and manifest.json."""
    cfg.validate()
    tracker = tracker or NullTracker()
    checkpoint, data = Path(checkpoint or cfg.checkpoint), Path(data or cfg.data)
    out = Path(output or cfg.output)
    torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    model, processor = load_for_finetune(checkpoint)
    records, dropped = valid_records(data)
    total_params = sum(p.numel() for p in model.parameters())
    trainable = apply_mode(model, cfg)
    lrs = module_lrs(model, cfg)
    state_bytes = model_state_bytes(model, nf4_llm=MODES[cfg.mode][1] == "qlora")
    precision = resolve_precision(cfg.precision)
    dataset = LlavaDataset(records, media_root_for(data, cfg.media_root or None, "finetune.media_root"), processor,
                           max_length=cfg.max_length)
    callback = FinetuneCallback(tracker, samples_per_step=cfg.batch_size * cfg.grad_accum)
    trainer = NVILATrainer(model=model, args=training_args(cfg, out, precision == "bf16"), train_dataset=dataset,
                           data_collator=PaddingCollator(processor.pad_id), module_lrs=lrs, callbacks=[callback])
    tracker.log_params({f"finetune.{k}": v for k, v in asdict(cfg).items()})
    started = time.perf_counter()
    with PeakMemory() as memory:
        result = trainer.train()
    seconds = time.perf_counter() - started
    export(model, processor, out)
    if (out / "trainer").is_dir() and not any((out / "trainer").iterdir()):
        (out / "trainer").rmdir()  # the Trainer's output_dir stays empty: fine-tuning saves no Trainer checkpoints
    meta = {"kind": "nvila-finetuned", "mode": cfg.mode, "vision": MODES[cfg.mode][0], "llm": MODES[cfg.mode][1],
            "source_checkpoint": str(checkpoint), "trainable_params": trainable, "total_params": total_params,
            "trainable_share": round(trainable["total"] / total_params, 6), "module_lrs": lrs,
            "precision": precision, "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(trainer.state.global_step, 1), 4),
            "peak_memory_bytes": memory.peak_bytes, "peak_memory_kind": memory.kind, "model_state_bytes": state_bytes,
            "final_loss": result.training_loss, "num_records": len(records), "dropped_records": dropped,
            "skipped_records": len(dataset.failures), "lora_merged": MODES[cfg.mode][1] in ("lora", "qlora")}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    (out / "log_history.json").write_text(json.dumps(callback.history, indent=2))
    write_stage_manifest(out, "finetune", asdict(cfg), inputs={"checkpoint": checkpoint, "data": data},
                         trainable_params=trainable)
    tracker.log_metrics({"train_seconds": seconds, "final_loss": result.training_loss,
                         "peak_memory_bytes": float(memory.peak_bytes), "trainable_params": float(trainable["total"])})
    return out
