"""Run one training stage: build or load the model, freeze per config, train with the HF Trainer, save the stage dir."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from nvila_model.console import progress_bars
from nvila_model.data.collate import PackingCollator, PaddingCollator
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import read_manifest
from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.manifest import git_revision, hash_path, write_stage_manifest
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import load_tokenizer
from nvila_model.tracking import NullTracker, Tracker
from nvila_model.train.config import MODULES, ModelParams, StageConfig
from nvila_model.train.hf_trainer import NVILATrainer, StageCallback
from nvila_model.train.precision import bf16_supported, convert_fp8, resolve_attention, resolve_precision

log = logging.getLogger(__name__)


def build_model(cfg: StageConfig, model_params: ModelParams) -> tuple[NVILAForConditionalGeneration, NVILAProcessor]:
    """The previous stage's model, or (first stage) a fresh one from the preset and the trained tokenizer."""
    if cfg.init_from:
        init = Path(cfg.init_from)
        if not (init / "config.json").is_file():
            raise ValueError(f"{init}: init_from is not a stage checkpoint directory (no config.json)")
        model = NVILAForConditionalGeneration.from_pretrained(init)
        tokenizer = NVILAProcessor.from_pretrained(init).tokenizer
    else:
        tokenizer = load_tokenizer(cfg.tokenizer_dir)
        config = build_config(model_params.preset, **model_params.overrides)
        if len(tokenizer) > config.text_config.vocab_size:
            raise ValueError(f"tokenizer in {cfg.tokenizer_dir} has {len(tokenizer)} tokens, more than the "
                             f"{model_params.preset} LLM vocabulary ({config.text_config.vocab_size})")
        config.text_config.pad_token_id = tokenizer.pad_token_id
        config.text_config.eos_token_id = tokenizer.eos_token_id
        model = NVILAForConditionalGeneration.from_components(config, model_params.vision_path, model_params.llm_path)
    if cfg.num_video_frames is not None:
        model.config.num_video_frames = cfg.num_video_frames
    if cfg.video_pool_size is not None:
        model.config.video_pool_size = cfg.video_pool_size
    model.config.max_seq_length = cfg.max_length
    model.config.validate()
    return model, NVILAProcessor(tokenizer, model.config)


def freeze_except(model: NVILAForConditionalGeneration, train_modules: list[str]) -> dict[str, int]:
    """Make only `train_modules` trainable (never the vision parameters past the feature layer); returns
    trainable parameter counts per module."""
    unused = set(model.unused_vision_parameters())
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".", 1)[0] in train_modules and name not in unused)
    return {m: sum(p.numel() for p in model.get_submodule(m).parameters() if p.requires_grad) for m in MODULES}


def train_records(cfg: StageConfig, datasets: DatasetsConfig) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Train records of the stage's datasets (a pruned manifest, when given, keeps only its ids) and their paths."""
    registry = DatasetRegistry(datasets)
    records, inputs = [], {}
    for name in cfg.datasets:
        records += registry.records(name, "train", seed=cfg.seed)
        for entry in registry.mixtures.get(name, {name: 1}):
            inputs[f"data:{entry}"] = str(registry.manifest_path(entry, "train"))
    if cfg.pruned_manifest:
        keep = {str(r["id"]) for r in read_manifest(cfg.pruned_manifest)}
        records = [r for r in records if str(r["id"]) in keep]
        inputs["pruned"] = cfg.pruned_manifest
    if not records:
        raise ValueError(f"datasets {cfg.datasets} hold no train records")
    return records, inputs


def training_arguments(cfg: StageConfig, out: Path, bf16: bool) -> TrainingArguments:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    use_deepspeed = bool(cfg.deepspeed) and (distributed or torch.cuda.is_available())
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1, bf16=bf16, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=cfg.num_workers, report_to="none", remove_unused_columns=False,
        activation_checkpointing=cfg.gradient_checkpointing, deepspeed=cfg.deepspeed if use_deepspeed else None,
        use_cpu=not torch.cuda.is_available(), save_only_model=False, disable_tqdm=not progress_bars(),
    )


def config_fingerprint(stage: str, cfg: StageConfig, model_params: ModelParams) -> str:
    blob = json.dumps({"stage": stage, "cfg": asdict(cfg), "model": asdict(model_params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resume_point(out: Path, fingerprint: str, resume: bool, is_main: bool = True) -> str | None:
    """The last checkpoint of an interrupted run of this same config, else None. The main process clears stale
    state and stamps the directory; the others (distributed runs) only read it afterwards."""
    ckpts, stamp = out / "checkpoints", out / "checkpoints" / "fingerprint"
    if resume and ckpts.is_dir() and stamp.is_file() and stamp.read_text() == fingerprint:
        last = get_last_checkpoint(str(ckpts))
        if last and (not (out / "meta.json").is_file() or not is_main):
            return last
    if is_main:
        if out.exists():
            shutil.rmtree(out)
        ckpts.mkdir(parents=True)
        stamp.write_text(fingerprint)
    return None


def run_stage(stage: str, cfg: StageConfig, model_params: ModelParams, datasets: DatasetsConfig,
              tracker: Tracker | None = None) -> Path:
    """Train one stage and write `cfg.out_dir`: model + processor, `meta.json`, `manifest.json`, and the last
    Trainer checkpoint (optimizer, scheduler, RNG) under `checkpoints/`. A killed run resumes from its last
    checkpoint when re-run with the same config."""
    cfg.validate(stage)
    records, inputs = train_records(cfg, datasets)
    fingerprint = config_fingerprint(stage, cfg, model_params)
    return fit(stage, cfg, lambda: build_model(cfg, model_params), records, inputs, fingerprint, tracker)


def fit(stage: str, cfg: StageConfig, make_model, records: list[dict[str, Any]], inputs: dict[str, str],
        fingerprint: str, tracker: Tracker | None = None) -> Path:
    """Train the model `make_model()` returns on `records` with the Trainer as `cfg` says; write `cfg.out_dir`.

    The one training implementation: the five stages and the DeltaLoss proxy scorers both come through here.
    """
    tracker = tracker or NullTracker()
    out = Path(cfg.out_dir)
    precision = resolve_precision(cfg.precision)
    use_bf16 = precision == "bf16" or (precision.startswith("fp8") and bf16_supported())
    args = training_arguments(cfg, out, use_bf16)  # sets up torch.distributed under torchrun / deepspeed
    with args.main_process_first(desc="stage directory"):
        resume_from = resume_point(out, fingerprint, cfg.resume, is_main=args.process_index == 0)
    set_seed(cfg.seed)
    model, processor = make_model()
    attention = resolve_attention(cfg.attn_implementation)
    model.set_attn_implementation(attention)
    trainable = freeze_except(model, cfg.train_modules)
    fp8_layers = convert_fp8(model, precision) if precision.startswith("fp8") else []
    dataset = LlavaDataset(records, None, processor, max_length=cfg.max_length, substitute_failed=True)
    pad_id = processor.pad_id
    collator = PackingCollator(pad_id, cfg.pack_tokens or cfg.max_length) if cfg.packing else PaddingCollator(pad_id)
    callback = StageCallback(tracker, samples_per_step=cfg.batch_size * cfg.grad_accum, name=stage,
                             progress_lines=args.disable_tqdm)
    trainer = NVILATrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                           module_lrs=cfg.lr, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # without a tqdm bar, StageCallback prints the progress lines
    run = {"stage": stage, "precision": precision, "attention": attention, "fp8_layers": len(fp8_layers),
           "packing": cfg.packing, "deepspeed": args.deepspeed or "off", "trainable_params": trainable,
           "num_train_records": len(records), "resumed_from": resume_from}
    tracker.log_params({f"{stage}.{k}": v for k, v in asdict(cfg).items()} | {"precision_path": precision})
    log.info("stage %s: %s", stage, run)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.perf_counter() - started
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return out
    processor.save_pretrained(out)
    run |= {"train_seconds": round(elapsed, 2), "global_steps": trainer.state.global_step,
            "final_loss": result.training_loss,
            "samples_per_s": round(result.metrics.get("train_samples_per_second", 0.0), 3),
            "skipped_records": len(dataset.failures), "git_revision": git_revision(),
            "inputs": {k: {"path": v, "sha256": hash_path(v)} for k, v in inputs.items()}}
    (out / "meta.json").write_text(json.dumps(run, indent=2, default=str))
    (out / "log_history.json").write_text(json.dumps(callback.history, indent=2))
    init_inputs = {"init_from": cfg.init_from} if cfg.init_from else {"tokenizer": cfg.tokenizer_dir}
    write_stage_manifest(out, stage, asdict(cfg), inputs={**inputs, **init_inputs}, precision=precision)
    tracker.log_metrics({"train_seconds": elapsed, "final_loss": result.training_loss,
                         "global_steps": trainer.state.global_step, "num_train_records": len(records)})
    return out
