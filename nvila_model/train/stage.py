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
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from nvila_model.checkpoint import load_checkpoint
from nvila_model.cli import progress_bars
from nvila_model.data.collate import PackingCollator, PaddingCollator
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import read_manifest
from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.deltaloss.config import TRAIN_MANIFEST
from nvila_model.manifest import git_revision, hash_path, staged_output, write_stage_manifest
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import load_tokenizer
from nvila_model.tracking import NullTracker, Tracker
from nvila_model.train.config import MODULES, ModelParams, StageConfig
from nvila_model.train.hf_trainer import NVILATrainer, StageCallback
from nvila_model.train.precision import bf16_supported, convert_fp8, resolve_attention, resolve_precision

log = logging.getLogger(__name__)
WORK_ENV = "NVILA_WORK_DIR"  # where interrupted stages keep their resumable checkpoints (outside the outputs)


def build_model(cfg: StageConfig, model_params: ModelParams, init: str | Path | None = None,
                tokenizer_dir: str | Path | None = None) -> tuple[NVILAForConditionalGeneration, NVILAProcessor]:
    """The previous stage's model (`init`; a missing or corrupt file is one line naming it), or (first stage) a fresh
    one from the preset and the trained tokenizer. Under ZeRO-3 both are built inside `deepspeed.zero.Init`."""
    if init is not None:
        model, processor = load_checkpoint(init, device=None, allow_quantized=False)
        tokenizer = processor.tokenizer
    else:
        if tokenizer_dir is None:
            raise ValueError("the first training stage needs the tokenizer folder (--tokenizer)")
        tokenizer = load_tokenizer(tokenizer_dir)
        config = build_config(model_params.preset, **model_params.overrides)
        if len(tokenizer) > config.text_config.vocab_size:
            raise ValueError(f"tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens, more than the "
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
    # a ZeRO-3 partitioned parameter is an empty placeholder; ds_numel is its full size
    return {m: sum(getattr(p, "ds_numel", p.numel()) for p in model.get_submodule(m).parameters() if p.requires_grad)
            for m in MODULES}


def train_records(cfg: StageConfig, datasets: DatasetsConfig, data: str | Path | None,
                  pruned: str | Path | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Train records of the stage's datasets (a pruned subset, when given, keeps only its ids) and their paths."""
    registry = DatasetRegistry(datasets, data)
    records, inputs = [], {}
    for name in cfg.datasets:
        records += registry.records(name, "train", seed=cfg.seed)
        for entry in registry.mixtures.get(name, {name: 1}):
            inputs[f"data:{entry}"] = str(registry.manifest_path(entry, "train"))
    if pruned is not None:
        manifest = Path(pruned) / TRAIN_MANIFEST
        if not manifest.is_file():
            raise ValueError(f"{manifest}: pruned subset not found (run the prune stage first)")
        keep = {str(r["id"]) for r in read_manifest(manifest)}
        records = [r for r in records if str(r["id"]) in keep]
        inputs["pruned"] = str(manifest)
    if not records:
        raise ValueError(f"datasets {cfg.datasets} hold no train records")
    return records, inputs


def training_arguments(cfg: StageConfig, checkpoints: Path, bf16: bool) -> TrainingArguments:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    use_deepspeed = bool(cfg.deepspeed) and (distributed or torch.cuda.is_available())
    return TrainingArguments(
        output_dir=str(checkpoints), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1, bf16=bf16, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=cfg.num_workers, report_to="none", remove_unused_columns=False,
        activation_checkpointing=cfg.gradient_checkpointing, deepspeed=cfg.deepspeed if use_deepspeed else None,
        use_cpu=not torch.cuda.is_available(), save_only_model=False, disable_tqdm=not progress_bars(),
    )


def make_collator(cfg: StageConfig, pad_id: int, attention: str) -> tuple[Any, str]:
    """The stage's batch collator and how it lays out a micro-batch (recorded in meta.json)."""
    if not cfg.packing:
        return PaddingCollator(pad_id), "padded rows, one sample each"
    kernel = ("flash-attn varlen kernel" if attention == "flash_attention_2"
              else "one causal SDPA call per sample (sdpa_varlen)")
    return PackingCollator(), f"one packed row per micro-batch, no padding; {kernel} on cu_seq_lens_q/k"


def work_dir(stage: str, fingerprint: str, root: str | Path | None = None) -> Path:
    """Where an unfinished run of this stage and config keeps its checkpoints: `<root>/<stage>/<fingerprint>`, root
    `$NVILA_WORK_DIR` or `.nvila/work`. Outside the stage output, which a pipeline run replaces or removes."""
    root = Path(root or os.environ.get(WORK_ENV) or ".nvila/work")
    return root / stage / fingerprint


def fingerprint(stage: str, cfg: Any, extra: dict[str, Any], inputs: dict[str, str]) -> str:
    """The identity of a run: stage, settings and the content of every input (so a changed input never resumes)."""
    blob = json.dumps({"stage": stage, "cfg": asdict(cfg), "extra": extra,
                       "inputs": {k: hash_path(v) for k, v in sorted(inputs.items())}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")  # written last by the Trainer's save
DEEPSPEED_TAG = "latest"  # DeepSpeed's save_checkpoint names its finished global_step folder here


def is_complete(ckpt: Path) -> bool:
    """Whether the Trainer finished writing checkpoint folder `ckpt`. Under DeepSpeed the model, optimizer and
    scheduler states live in the folder its `latest` file names (no optimizer.pt; no weights file under ZeRO-3)."""
    if not (ckpt / "trainer_state.json").is_file():  # the Trainer writes it last
        return False
    tag = ckpt / DEEPSPEED_TAG
    if tag.is_file():
        return (ckpt / tag.read_text().strip()).is_dir()
    return all((ckpt / name).is_file() for name in CHECKPOINT_FILES) and any(ckpt.glob("model*.safetensors"))


def complete_checkpoints(ckpts: Path) -> list[Path]:
    """The checkpoints in `ckpts` that were written whole, newest first. The Trainer writes a checkpoint folder file
    by file, so a run killed while saving leaves a partial one, which is not resumable."""
    found = sorted(ckpts.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    return [p for p in found if is_complete(p)]


def resume_point(work: Path, resume: bool, is_main: bool = True) -> str | None:
    """The last complete checkpoint of an interrupted run with this fingerprint, else None (and a fresh work
    folder). Partial checkpoints newer than it (a kill while saving) are removed by the main process."""
    ckpts = work / "checkpoints"
    complete = complete_checkpoints(ckpts) if resume and ckpts.is_dir() else []
    if is_main:
        if not complete:
            shutil.rmtree(work, ignore_errors=True)
            ckpts.mkdir(parents=True)
        else:
            for partial in ckpts.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                if int(partial.name.rsplit("-", 1)[1]) > int(complete[0].name.rsplit("-", 1)[1]):
                    log.warning("removing %s: written partly (the run was killed while saving)", partial)
                    shutil.rmtree(partial)
    return str(complete[0]) if complete else None


def run_stage(stage: str, cfg: StageConfig, model_params: ModelParams, datasets: DatasetsConfig, *,
              data: str | Path | None, out: str | Path, init: str | Path | None = None,
              tokenizer: str | Path | None = None, pruned: str | Path | None = None,
              work_root: str | Path | None = None, tracker: Tracker | None = None) -> Path:
    """Train one stage from `init` (or, for the first stage, a fresh model with the `tokenizer`) on the stage's
    datasets in `data` (only the ids of the `pruned` subset, when given); write `out`: model + processor,
    `meta.json`, `log_history.json`, `manifest.json`. A killed run resumes from its last checkpoint when re-run with
    the same settings and inputs; `out` is replaced only when the new output is complete. A disabled stage
    (`enabled: false`) passes `init` on unchanged (`pass_through`)."""
    if not cfg.enabled:
        return pass_through(stage, cfg, init, Path(out))
    records, inputs = train_records(cfg, datasets, data, pruned)
    inputs |= {"init_from": str(init)} if init is not None else {"tokenizer": str(tokenizer)}
    fp = fingerprint(stage, cfg, asdict(model_params), inputs)
    return fit(stage, cfg, lambda: build_model(cfg, model_params, init, tokenizer), records, inputs, Path(out),
               work_dir(stage, fp, work_root), tracker)


PASSED_ON = ("meta.json", "log_history.json", "manifest.json", "checkpoints")  # the stage's own records, not copied


def pass_through(stage: str, cfg: StageConfig, init: str | Path | None, out: Path) -> Path:
    """The output of a disabled stage: the previous stage's model, processor and weights unchanged (what skipping
    the stage means, e.g. NVILA-Lite without vision-encoder pre-training), with a `meta.json` that records zero
    training (no steps, no time) and an empty loss history."""
    if init is None:
        raise ValueError(f"{stage}: enabled is false, but the first training stage has no previous model to pass on")
    init = Path(init)
    load_checkpoint(init, device=None, allow_quantized=False, task="pass on")  # a missing or corrupt input fails here
    with staged_output(out) as tmp:
        for item in sorted(init.iterdir()):
            if item.name not in PASSED_ON:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        meta = {"stage": stage, "enabled": False, "passed_on_from": str(init), "train_seconds": 0.0,
                "global_steps": 0, "num_train_records": 0, "git_revision": git_revision(),
                "inputs": {"init_from": {"path": str(init), "sha256": hash_path(init / "model.safetensors")}}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / "log_history.json").write_text("[]")
        write_stage_manifest(tmp, stage, asdict(cfg), inputs={"init_from": str(init)}, passed_on=True)
    return out


def summarise_history(log_history: list[dict[str, Any]]) -> tuple[list[dict[str, float]], float]:
    """The Trainer's logged training rows (those with a loss) and the mean loss over every step they cover.

    Read from the Trainer state, which checkpoints carry, so a resumed run reports the same history and final loss
    as an uninterrupted one.
    """
    rows = [{k: float(v) for k, v in row.items() if isinstance(v, int | float)} for row in log_history
            if "loss" in row]
    covered, total, last = 0, 0.0, 0
    for row in rows:
        steps = int(row["step"]) - last
        total, covered, last = total + row["loss"] * steps, covered + steps, int(row["step"])
    return rows, (total / covered if covered else float("nan"))


def fit(stage: str, cfg: StageConfig, make_model, records: list[dict[str, Any]], inputs: dict[str, str],
        out: Path, work: Path, tracker: Tracker | None = None) -> Path:
    """Train the model `make_model()` returns on `records` with the Trainer as `cfg` says; write `out`.

    The one training implementation: the five stages and the DeltaLoss proxy scorers both come through here.
    """
    tracker = tracker or NullTracker()
    precision = resolve_precision(cfg.precision, cfg.fp8_emulate)
    use_bf16 = precision == "bf16" or (precision.startswith("fp8") and bf16_supported())
    group_was_open = torch.distributed.is_initialized()
    args = training_arguments(cfg, work / "checkpoints", use_bf16)  # sets up torch.distributed when launched so
    with args.main_process_first(desc="work folder"):
        resume_from = resume_point(work, cfg.resume, is_main=args.process_index == 0)
    set_seed(cfg.seed)
    zero3 = is_deepspeed_zero3_enabled()  # the TrainingArguments above registered the DeepSpeed config
    if zero3:
        import deepspeed

        # zero.Init takes the world size from deepspeed.comm: the TrainingArguments set it up on GPUs; on CPU (gloo)
        # only torch.distributed is, and this wraps that group (a no-op when already done)
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    model, processor = make_model()  # under ZeRO-3 transformers builds and loads it inside deepspeed.zero.Init
    attention = resolve_attention(cfg.attn_implementation)
    model.set_attn_implementation(attention)
    trainable = freeze_except(model, cfg.train_modules)
    fp8_layers = convert_fp8(model, precision) if precision.startswith("fp8") else []
    dataset = LlavaDataset(records, None, processor, max_length=cfg.max_length, substitute_failed=True,
                           cache_mb=cfg.sample_cache_mb)
    collator, layout = make_collator(cfg, processor.pad_id, attention)
    callback = StageCallback(tracker, samples_per_step=cfg.batch_size * cfg.grad_accum, name=stage,
                             progress_lines=args.disable_tqdm)
    trainer = NVILATrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                           module_lrs=cfg.lr, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # without a tqdm bar, StageCallback prints the progress lines
    run = {"stage": stage, "precision": precision, "attention": attention, "fp8_layers": len(fp8_layers),
           "packing": cfg.packing, "batch_layout": layout, "deepspeed": args.deepspeed or "off",
           "built_under_zero_init": zero3, "trainable_params": trainable, "num_train_records": len(records),
           "resumed_from": resume_from}
    tracker.log_params({f"{stage}.{k}": v for k, v in asdict(cfg).items()} | {"precision_path": precision})
    log.info("stage %s: %s", stage, run)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.perf_counter() - started
    is_main = trainer.is_world_process_zero()
    with staged_output(out, swap=is_main) as tmp:
        trainer.save_model(str(tmp))
        if is_main:
            history, final_loss = summarise_history(trainer.state.log_history)
            processor.save_pretrained(tmp)
            samples_per_s = result.metrics.get("train_samples_per_second", 0.0)
            run |= {"train_seconds": round(elapsed, 2), "cpu_threads": torch.get_num_threads(),
                    "global_steps": trainer.state.global_step,
                    "final_loss": final_loss, "samples_per_s": round(samples_per_s, 3),
                    "skipped_records": len(dataset.failures), "git_revision": git_revision(),
                    "inputs": {k: {"path": v, "sha256": hash_path(v)} for k, v in inputs.items()}}
            (tmp / "meta.json").write_text(json.dumps(run, indent=2, default=str))
            (tmp / "log_history.json").write_text(json.dumps(history, indent=2))
            write_stage_manifest(tmp, stage, asdict(cfg), inputs=inputs, precision=precision)
    if torch.distributed.is_initialized():
        # every rank leaves together once rank 0 has written the output, and the group this fit opened is closed
        # here, not by interpreter exit: a ZeRO-3 CI run had one rank abort as it exited while the other was still
        # in the group ("terminate called without an active exception")
        torch.distributed.barrier()
        if not group_was_open:
            trainer.accelerator.state.destroy_process_group()
    if not is_main:
        return out
    shutil.rmtree(work, ignore_errors=True)  # finished: nothing left to resume
    if work.parent.is_dir() and not any(work.parent.iterdir()):
        work.parent.rmdir()
    tracker.log_metrics({"train_seconds": elapsed, "final_loss": final_loss,
                         "global_steps": trainer.state.global_step, "num_train_records": len(records)})
    return out
