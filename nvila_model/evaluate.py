"""Evaluation: greedy-generation exact-match accuracy per subset beside chance, plus efficiency figures."""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nvila_model.checkpoint import load_checkpoint
from nvila_model.data.answers import exact_match
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import SUBSETS_FILE
from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.device import resolve_device
from nvila_model.manifest import staged_output, write_stage_manifest
from nvila_model.train.config import METRIC_DECIMALS, EvalConfig

# Two-sided 95% normal quantile: a paired difference beyond Z95 standard errors is one the test set resolves.
Z95 = 1.96


def score_predictions(rows: list[dict[str, Any]], chance: dict[str, float] | None = None) -> dict[str, float]:
    """Flat metrics from rows with `subset`, `prediction`, `answer`: acc_<subset>, chance_<subset>, acc_mean."""
    by_subset: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        by_subset[row["subset"]].append(exact_match(row["prediction"], row["answer"]))
    metrics: dict[str, float] = {}
    for subset in sorted(by_subset):
        metrics[f"acc_{subset}"] = sum(by_subset[subset]) / len(by_subset[subset])
        if chance and subset in chance:
            metrics[f"chance_{subset}"] = float(chance[subset])
    accs = [metrics[f"acc_{s}"] for s in by_subset]
    metrics["acc_mean"] = sum(accs) / len(accs) if accs else 0.0
    if chance and all(s in chance for s in by_subset):
        metrics["chance_mean"] = sum(chance[s] for s in by_subset) / len(by_subset)
    metrics["num_samples"] = float(len(rows))
    return metrics


def paired_difference(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]],
                      subsets: list[str] | None = None) -> dict[str, float]:
    """How far model A's accuracy is above model B's on the same test answers, and how precisely the test set gives it.

    `rows_*` are `predictions.jsonl` rows (`id`, `subset`, `correct`); answers are paired by `id`, and only answers
    both models gave count. `diff` is A's mean-over-`subsets` accuracy (default: every subset both answered) minus
    B's; `se` its standard error from the per-answer differences (each subset's sample variance over its count, the
    paired form of McNemar's test): the test set's sampling noise only, not the spread between training seeds.
    Returns `diff`, `se`, `paired` (answers compared) and `unpaired` (answers only one model gave).
    """
    b_by_id = {row["id"]: row for row in rows_b}
    per_subset: dict[str, list[int]] = defaultdict(list)
    for row in rows_a:
        other = b_by_id.get(row["id"])
        if other is not None and (subsets is None or row["subset"] in subsets):
            per_subset[row["subset"]].append(int(row["correct"]) - int(other["correct"]))
    missing = sorted(set(subsets or []) - set(per_subset))
    if missing or not per_subset:
        raise ValueError(f"paired accuracy: no answer both models gave on subset(s) {missing or subsets}")
    diff, variance = 0.0, 0.0
    for d in per_subset.values():
        mean = sum(d) / len(d)
        diff += mean
        variance += (sum((x - mean) ** 2 for x in d) / (len(d) - 1) if len(d) > 1 else 0.0) / len(d)
    paired = sum(len(d) for d in per_subset.values())
    unpaired = len(rows_a) + len(rows_b) - 2 * len({row["id"] for row in rows_a} & set(b_by_id))
    return {"diff": diff / len(per_subset), "se": variance ** 0.5 / len(per_subset), "paired": float(paired),
            "unpaired": float(unpaired)}


def paired_table(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two evaluations side by side on the answers both gave: per subset and for the mean over subsets, each model's
    accuracy, the paired difference A - B with its standard error (`paired_difference`) and `resolved`: the
    difference is beyond 1.96 standard errors of zero."""
    subsets = sorted({r["subset"] for r in rows_a} & {r["subset"] for r in rows_b})
    table = []
    for name, chosen in [*((s, [s]) for s in subsets), ("mean", subsets)]:
        pair = paired_difference(rows_a, rows_b, chosen)
        acc = [_mean_accuracy(rows, chosen) for rows in (rows_a, rows_b)]
        table.append({"subset": name, "a": acc[0], "b": acc[1], **pair,
                      "resolved": abs(pair["diff"]) > Z95 * pair["se"]})
    return table


def _mean_accuracy(rows: list[dict[str, Any]], subsets: list[str]) -> float:
    per_subset = [[r["correct"] for r in rows if r["subset"] == s] for s in subsets]
    return sum(sum(c) / len(c) for c in per_subset) / len(per_subset)


def test_samples(cfg: EvalConfig, datasets: DatasetsConfig, data: str | Path | None) -> list[dict[str, Any]]:
    registry = DatasetRegistry(datasets, data)
    records, seen = [], defaultdict(int)
    for name in cfg.datasets:
        for record in registry.records(name, cfg.split):
            subset = record.get("subset", name)
            if cfg.limit_per_subset is None or seen[subset] < cfg.limit_per_subset:
                seen[subset] += 1
                records.append(record)
    if not records:
        raise ValueError(f"eval: datasets {cfg.datasets} have no {cfg.split} records")
    return records


@torch.no_grad()
def predict(model, processor, records: list[dict[str, Any]], batch_size: int, max_new_tokens: int):
    """Greedy answers to the last question of each record; yields prediction rows."""
    raw = LlavaDataset(records, None, processor=None, num_video_frames=processor.config.num_video_frames)
    rows = []
    for start in range(0, len(records), batch_size):
        prompts, metas = [], []
        for i in range(start, min(start + batch_size, len(records))):
            sample = raw[i]
            if sample is None:
                continue
            conv = sample["conversations"]
            prompt = processor.encode(conv[:-1], sample["images"] or None, sample["video"], add_generation_prompt=True)
            prompts.append(prompt)
            metas.append({"id": sample["id"], "subset": records[i].get("subset", "all"), "answer": conv[-1]["value"],
                          "question": conv[-2]["value"], "visual_tokens": _visual_tokens(prompt, processor)})
        if not prompts:
            continue
        batch = on_device(processor.pad(prompts, padding_side="left"), model)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        for meta, ids in zip(metas, out[:, batch["input_ids"].shape[1]:], strict=True):
            meta["prediction"] = processor.decode(ids)
            meta["correct"] = exact_match(meta["prediction"], meta["answer"])
            rows.append(meta)
    return rows, raw.failures


def on_device(batch: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """The batch's tensors moved to the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def synchronized_clock(like: torch.Tensor) -> float:
    """perf_counter after the GPU queue of `like`'s device has drained (CUDA kernels run asynchronously)."""
    if like.is_cuda:
        torch.cuda.synchronize(like.device)
    return time.perf_counter()


def _visual_tokens(prompt: dict[str, torch.Tensor], processor) -> int:
    ids = prompt["input_ids"]
    return int(((ids == processor.config.image_token_id) | (ids == processor.config.video_token_id)).sum())


@torch.no_grad()
def efficiency(model, processor, records: list[dict[str, Any]], samples: int, decode_tokens: int) -> dict[str, float]:
    """Prefill latency and decode tokens/s at batch 1 over the first `samples` records (after one warm-up)."""
    raw = LlavaDataset(records[: samples + 1], None, processor=None,
                       num_video_frames=processor.config.num_video_frames)
    prefill, decode = [], []
    for i in range(len(raw)):
        sample = raw[i]
        if sample is None:
            continue
        prompt = on_device(processor.pad([processor.encode(sample["conversations"][:-1], sample["images"] or None,
                                                           sample["video"], add_generation_prompt=True)]), model)
        t0 = synchronized_clock(prompt["input_ids"])
        model(**prompt, use_cache=True)
        t1 = synchronized_clock(prompt["input_ids"])
        model.generate(**prompt, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False)
        t2 = synchronized_clock(prompt["input_ids"])
        if i:  # the first sample only warms up
            prefill.append(t1 - t0)
            decode.append((decode_tokens - 1) / max(1e-9, (t2 - t1) - (t1 - t0)))
    on_gpu = next(model.parameters()).is_cuda
    peak = torch.cuda.max_memory_allocated() if on_gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"prefill_ms": 1000 * sum(prefill) / max(1, len(prefill)),
            "decode_tokens_per_s": sum(decode) / max(1, len(decode)), "peak_memory_mb": peak / 2**20}


def run_eval(cfg: EvalConfig, datasets: DatasetsConfig, *, data: str | Path | None, checkpoint: str | Path,
             out: str | Path) -> dict[str, float]:
    """Evaluate `checkpoint` on the test split of `cfg.datasets` in the corpus `data` on `cfg.device`; write
    `metrics.json` (flat), `predictions.jsonl` and `manifest.json` (with the device) to `out`; returns the metrics.
    Chance levels come from the corpus's `subsets.json` when it has one."""
    device = resolve_device(cfg.device, "eval.device")
    model, processor = load_checkpoint(checkpoint, device)
    records = test_samples(cfg, datasets, data)
    chance = None
    subsets_file = Path(data or ".") / SUBSETS_FILE
    if data is not None and subsets_file.is_file():
        chance = {row["name"]: row["chance"] for row in json.loads(subsets_file.read_text())}
    started = time.perf_counter()
    rows, failures = predict(model, processor, records, cfg.batch_size, cfg.max_new_tokens)
    metrics = score_predictions(rows, chance)
    metrics["eval_seconds"] = time.perf_counter() - started
    metrics["visual_tokens_per_sample"] = sum(r["visual_tokens"] for r in rows) / max(1, len(rows))
    metrics["failed_samples"] = float(len(failures))
    metrics |= efficiency(model, processor, records, cfg.efficiency_samples, cfg.decode_tokens)
    with staged_output(out) as tmp:
        rounded = {k: round(v, METRIC_DECIMALS) for k, v in metrics.items()}
        (tmp / "metrics.json").write_text(json.dumps(rounded, indent=2))
        with open(tmp / "predictions.jsonl", "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        write_stage_manifest(tmp, "eval", asdict(cfg), inputs={"checkpoint": Path(checkpoint) / "model.safetensors"},
                             device=str(device))
    return metrics
