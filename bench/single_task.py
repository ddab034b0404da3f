"""Shared by the one-task A/B benches (bench/visual_centering.py, bench/video_frames.py): a corpus of some of the
frontier's subsets alone, without label noise or duplicates, and a tiny NVILA trained on it from scratch with every
module training, then scored by test exact match per subset.

Both arms of an A/B get the same corpus, seed, batches and optimizer settings (the learning rates, warm-up, cosine
decay and gradient clipping of a params.yaml stage), so what differs is the model setting under test.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def params() -> dict[str, Any]:
    from nvila_model.params import read_params

    return read_params(PARAMS)


def arg_parser(doc: str, arms: Iterable[str], tasks: Iterable[str], train: int, test: int,
               default_arms: str | None = None) -> argparse.ArgumentParser:
    """A one-task bench's command line: records per task, steps, seed, and the arms and tasks to run
    (comma-separated; `choices` checks them)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(tasks), help=f"comma-separated, of {list(tasks)}")
    parser.add_argument("--arms", default=default_arms or ",".join(arms), help=f"comma-separated, of {list(arms)}")
    parser.add_argument("--train", type=int, default=train, help="training records per task")
    parser.add_argument("--test", type=int, default=test, help="test records per task")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def choices(parser: argparse.ArgumentParser, args: argparse.Namespace, arms: Iterable[str],
            tasks: Iterable[str]) -> tuple[list[str], list[str]]:
    """The arms and tasks `args` names, in order; an unknown one exits with the choices."""
    picked_arms, picked_tasks = args.arms.split(","), args.tasks.split(",")
    unknown = sorted(set(picked_arms) - set(arms)) + sorted(set(picked_tasks) - set(tasks))
    if unknown:
        parser.error(f"unknown arms or tasks {unknown}: arms {list(arms)}, tasks {list(tasks)}")
    return picked_arms, picked_tasks


def add_knob_option(parser: argparse.ArgumentParser, subset: str) -> None:
    """`--knob KEY=VALUE` (repeatable): a generator knob of `subset` on top of the frontier's settings, the value
    read as YAML (`--knob words=[ace,aec,cae] --knob min_side=300`)."""
    parser.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a generator knob of the {subset} subset (SubsetConfig), the value as YAML; repeatable")


def _knobs(items: Iterable[str]) -> dict[str, Any]:
    """Each `--knob KEY=VALUE` as {key: YAML value}, read as `--set` is; a malformed one is a ValueError naming it."""
    from flows.config import parse_overrides

    return parse_overrides(items, option="--knob", example="min_side=300")


def knobs_of(parser: argparse.ArgumentParser, args: argparse.Namespace, subset: str) -> dict[str, dict[str, Any]]:
    """`--knob` settings as `subset_corpus`'s knobs ({subset: {key: value}}), checked on top of the frontier's settings
    by the generator's own config before any work: a malformed or invalid one exits with one line naming it."""
    from pydantic import ValidationError

    from nvila_model.data.config import GenerateConfig

    try:
        knobs = _knobs(args.knob)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        GenerateConfig(subsets={subset: {**params()["frontier"]["settings"]["generate.subsets"].get(subset, {}),
                                         **knobs}})
    except ValidationError as exc:
        parser.error("--knob: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    return {subset: knobs} if knobs else {}


def result_name(prefix: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The results file's name: `prefix` and each setting that differs from its default (`--arms llm4 --steps 900`:
    `<prefix>_armsllm4_steps900`; a knob by its key and value: `--knob glyph_px=[8,9]`: `_glyph_px8-9`), so a run with
    other settings does not overwrite the default run's figures."""
    named = [(key, value) for key, value in vars(args).items() if key != "knob" and value != parser.get_default(key)]
    named += [(key, ",".join(map(str, value)) if isinstance(value, list) else value)
              for key, value in _knobs(getattr(args, "knob", [])).items()]
    return prefix + "".join(f"_{key}{str(value).replace(',', '-')}" for key, value in named)


def subset_corpus(root: Path, sizes: dict[str, tuple[int, int]], seed: int,
                  knobs: dict[str, dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """The frontier's settings of the subsets in `sizes` ({subset: (train, test)}) and no other subset, clean, with
    `knobs` ({subset: {knob: value}}) on top: (manifest dir, tokenizer dir)."""
    from nvila_model.data.config import DEFAULT_SUBSETS, GenerateConfig
    from nvila_model.data.generate import run_generate
    from nvila_model.data.manifest import conversation_text, read_manifest
    from nvila_model.tokenizer import train_tokenizer

    frontier = params()["frontier"]["settings"]["generate.subsets"]
    subsets: dict[str, dict[str, Any]] = {name: {"enabled": False} for name in DEFAULT_SUBSETS if name not in sizes}
    for name, (train, test) in sizes.items():
        subsets[name] = {**frontier.get(name, {}), **(knobs or {}).get(name, {}), "train": train, "test": test,
                         "noise": 0.0, "duplicate": 0.0}
    data = run_generate(GenerateConfig(seed=seed, subsets=subsets), root / "raw")
    texts = [conversation_text(r["conversations"]) for r in read_manifest(data / "train.jsonl")]
    train_tokenizer(texts, 512).save_pretrained(str(root / "tokenizer"))
    return data, root / "tokenizer"


def subset_table(data: Path) -> dict[str, dict[str, Any]]:
    """What the generated corpus `data` states about each of its subsets (its `subsets.json`: answer sets, chance)."""
    import json

    from nvila_model.data.manifest import SUBSETS_FILE

    return {row["name"]: row for row in json.loads((data / SUBSETS_FILE).read_text())}


def exact_match(model, dataset, collate, batch_size: int = 16) -> dict[str, float]:
    """Per subset, the share of test records whose every answer token is the model's
    argmax under teacher forcing."""
    import torch

    from nvila_model.data.collate import model_inputs, sample_index

    subset_of = {r["id"]: r["subset"] for r in dataset.records}
    model.eval()
    hits: dict[str, list[bool]] = {}
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            inputs = model_inputs(batch)
            labels = inputs.pop("labels")
            inputs.pop("attention_mask", None)
            embeds = model.embed(inputs.pop("input_ids"), inputs.pop("pixel_values"), inputs.pop("media_layout"))
            logits_TV, targets_T, supervised_1L = model.supervised_logits(embeds, None, inputs.pop("position_ids"),
                                                                          labels, **inputs)
            hit_T = logits_TV.argmax(-1) == targets_T
            record_T = sample_index(batch)[supervised_1L[0]]  # the record of each supervised token
            misses = torch.zeros(len(batch["ids"]), dtype=torch.long).index_add_(0, record_T, (~hit_T).long())
            for record_id, miss in zip(batch["ids"], misses.tolist(), strict=True):
                hits.setdefault(subset_of[record_id], []).append(miss == 0)
    model.train()
    return {name: sum(h) / len(h) for name, h in sorted(hits.items())}


def train(overrides: dict[str, Any], data: Path, tok_dir: Path, steps: int, seed: int, stage: str = "image_sft",
          memorise: int = 0, probe: Callable[[Any, dict], dict[str, float]] | None = None) -> dict[str, Any]:
    """Train the tiny preset with `overrides` (NVILAConfig fields) for `steps` steps of `stage`'s recipe on
    `data`'s train split (its first `memorise` records when set); `probe(model, batch)` adds measurements on 32
    training records, taken before (`_start`) and after (`_end`) training."""
    import torch

    from nvila_model.data.collate import PackingCollator, model_inputs
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.params import parse
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer
    from nvila_model.train.config import StageConfig

    all_params = params()
    recipe = parse(StageConfig, all_params[stage], where=stage)
    tokenizer = load_tokenizer(tok_dir)
    config = build_config(all_params["model"]["preset"], **overrides)
    config.text_config.pad_token_id, config.text_config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = NVILAForConditionalGeneration(config).train()
    model.set_attn_implementation("sdpa_varlen")
    processor = NVILAProcessor(tokenizer, config)
    records = read_manifest(data / "train.jsonl")
    records = records[:memorise] if memorise else records
    # each record is decoded, tiled and tokenized once (the stages' sample cache)
    train_set = LlavaDataset(records, data, processor, max_length=recipe.max_length, cache_mb=4096)
    test_set = LlavaDataset(read_manifest(data / "test.jsonl"), data, processor, max_length=recipe.max_length)
    collate = PackingCollator()
    groups: dict[str, list] = {}
    for name, param in model.named_parameters():
        groups.setdefault(name.split(".")[0], []).append(param)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": recipe.lr[name]} for name, ps in groups.items()],
                                  weight_decay=recipe.weight_decay)
    warmup = max(1, math.ceil(recipe.warmup_ratio * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(  # the stages' schedule: linear warm-up, cosine decay
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    order = torch.Generator().manual_seed(seed)
    probe_batch = collate([train_set[i] for i in range(min(32, len(train_set)))])
    label = ", ".join(f"{k}={v}" for k, v in overrides.items())
    row: dict[str, Any] = {f"{k}_start": v for k, v in (probe(model, probe_batch) if probe else {}).items()}
    began, smoothed = time.perf_counter(), None
    for step in range(steps):
        batch = collate([train_set[i] for i in torch.randint(len(train_set), (recipe.batch_size,),
                                                             generator=order).tolist()])
        loss = model(**model_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        smoothed = loss.item() if smoothed is None else 0.9 * smoothed + 0.1 * loss.item()
        if (step + 1) % 50 == 0:
            print(f"{label}: step {step + 1}/{steps} loss {smoothed:.3f}", flush=True)
    seconds = time.perf_counter() - began
    row |= {f"{k}_end": v for k, v in (probe(model, probe_batch) if probe else {}).items()}
    matches = exact_match(model, test_set, collate)
    return row | {"train_loss_end": smoothed, **{f"test_{name}": v for name, v in matches.items()},
                  "test_mean": sum(matches.values()) / len(matches), "train_seconds": seconds}
