"""`nvila peer train`: the peer trained with transformers' stock Trainer on the same corpus and tokenizer as NVILA."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from nvila_model.data.loader import LlavaDataset
from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.manifest import git_revision, hash_path, staged_output, write_stage_manifest
from nvila_model.peer.config import PeerConfig
from nvila_model.peer.model import PEER_KIND, PeerCollator, PeerProcessor, build_peer, peer_inputs_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import load_tokenizer
from nvila_model.tracking import NullTracker, Tracker
from nvila_model.train.config import ModelParams
from nvila_model.train.hf_trainer import StageCallback
from nvila_model.train.precision import resolve_precision
from nvila_model.train.stage import fingerprint, resume_point, summarise_history, work_dir


def peer_arguments(cfg: PeerConfig, checkpoints: Path, bf16: bool) -> TrainingArguments:
    """transformers' defaults (AdamW, linear warm-up then cosine) with the recipe's numbers; CPU or one GPU."""
    return TrainingArguments(
        output_dir=str(checkpoints), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, bf16=bf16, seed=cfg.seed,
        data_seed=cfg.seed, report_to="none", remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False)


def run_peer_train(family: str, cfg: PeerConfig, model_params: ModelParams, datasets: DatasetsConfig, *,
                   data: str | Path | None, tokenizer: str | Path, out: str | Path,
                   tracker: Tracker | None = None) -> Path:
    """Train peer `family` from scratch on the train split of `cfg.datasets` (all data: the peer has no pruning) and
    write `out`: model, processor, `meta.json` (time, steps, records), `log_history.json`, `manifest.json`. A killed
    run resumes from its last checkpoint when re-run with the same settings and inputs."""
    if family != PEER_KIND:
        raise ValueError(f"peer {family!r} unknown; known: [{PEER_KIND!r}]")
    tracker = tracker or NullTracker()
    registry = DatasetRegistry(datasets, data)
    records = [r for name in cfg.datasets for r in registry.records(name, "train", seed=cfg.seed)]
    if not records:
        raise ValueError(f"peer.datasets {cfg.datasets} hold no train records")
    entries = [entry for name in cfg.datasets for entry in registry.mixtures.get(name, {name: 1})]
    inputs = {"tokenizer": str(tokenizer)} | {f"data:{e}": str(registry.manifest_path(e, "train")) for e in entries}
    work = work_dir(f"peer-{family}", fingerprint(f"peer-{family}", cfg, asdict(model_params), inputs))
    precision = resolve_precision(cfg.precision)
    args = peer_arguments(cfg, work / "checkpoints", precision == "bf16")
    resume_from = resume_point(work, resume=True)
    set_seed(cfg.seed)
    tok = load_tokenizer(tokenizer)
    processor = PeerProcessor(NVILAProcessor(tok, peer_inputs_config(model_params, cfg.num_video_frames)))
    model = build_peer(processor.config, tok)
    dataset = LlavaDataset(records, None, processor, max_length=cfg.max_length, substitute_failed=True,
                           cache_mb=cfg.sample_cache_mb)
    callback = StageCallback(tracker, samples_per_step=cfg.batch_size * cfg.grad_accum)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=PeerCollator(processor),
                      callbacks=[callback])
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.perf_counter() - started
    history, final_loss = summarise_history(trainer.state.log_history)
    run = {"stage": f"peer@{family}", "kind": "peer", "family": family, "model_class": type(model).__name__,
           "trainer": "transformers.Trainer", "precision": precision, "packing": False, "dynamic_s2": False,
           "projector": "mlp2x_gelu", "visual_tokens_per_image": processor.config.tokens_per_tile,
           "num_video_frames": cfg.num_video_frames, "num_train_records": len(records), "resumed_from": resume_from,
           "train_seconds": round(elapsed, 2), "global_steps": trainer.state.global_step, "final_loss": final_loss,
           "samples_per_s": round(result.metrics.get("train_samples_per_second", 0.0), 3),
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "skipped_records": len(dataset.failures), "git_revision": git_revision(),
           "inputs": {k: {"path": v, "sha256": hash_path(v)} for k, v in inputs.items()}}
    with staged_output(out) as tmp:
        trainer.save_model(str(tmp))
        processor.save_pretrained(tmp)
        (tmp / "meta.json").write_text(json.dumps(run, indent=2, default=str))
        (tmp / "log_history.json").write_text(json.dumps(history, indent=2))
        write_stage_manifest(tmp, f"peer@{family}", asdict(cfg), inputs=inputs, precision=precision)
    shutil.rmtree(work, ignore_errors=True)
    tracker.log_metrics({"train_seconds": elapsed, "final_loss": final_loss,
                         "global_steps": trainer.state.global_step, "num_train_records": len(records)})
    return Path(out)
