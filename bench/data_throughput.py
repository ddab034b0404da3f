"""Loader throughput: samples/s of LlavaDataset + processor + padding collator with 0 and 2 DataLoader workers."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nvila_model.data.collate import PaddingCollator
from nvila_model.data.config import GenerateConfig
from nvila_model.data.generate import run_generate
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import read_manifest
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import train_tokenizer

RESULTS = Path(__file__).parent / "results" / "data_throughput.json"


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)


def measure(dataset: LlavaDataset, workers: int, batch_size: int, pad_id: int) -> dict[str, float]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=PaddingCollator(pad_id), worker_init_fn=_init_worker)
    start = time.perf_counter()
    samples = tokens = 0
    for batch in loader:
        samples += len(batch["ids"])
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start  # includes worker start-up, as a training epoch would
    return {"workers": workers, "samples": samples, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=0.5, help="corpus scale (0.5: ~1100 train records)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = run_generate(GenerateConfig(scale=args.scale), Path(tmp) / "synth")
        records = read_manifest(root / "train.jsonl")
        texts = [t["value"] for r in records[:500] for t in r["conversations"]]
        config = build_config(args.preset)
        processor = NVILAProcessor(train_tokenizer(texts, vocab_size=config.text_config.vocab_size), config)
        dataset = LlavaDataset(records, root, processor)
        rows = [measure(dataset, w, args.batch_size, processor.pad_id) for w in (0, 2)]
    kinds = {k: sum(1 for r in records if k in r) for k in ("image", "images", "video")}
    print(f"loader throughput, preset {args.preset}, {len(records)} train records {kinds}, batch {args.batch_size}")
    print(f"{'workers':>8} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'tokens/s':>10}")
    for row in rows:
        print(f"{row['workers']:>8} {row['samples']:>8} {row['seconds']:>8} {row['samples_per_s']:>10} "
              f"{row['tokens_per_s']:>10}")
    speedup = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    print(f"2 workers vs 0: {speedup:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"preset": args.preset, "scale": args.scale, "records": len(records),
                                   "kinds": kinds, "batch_size": args.batch_size, "runs": rows,
                                   "speedup_2_workers": round(speedup, 3)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
