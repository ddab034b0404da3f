"""DeltaLoss scoring throughput: plain single-process loop vs a Ray ActorPool of 1 and 2 actors, same samples, same run.

Usage: .venv/bin/python bench/scoring.py [--num-samples 200] [--batch-size 50]
Builds a synthetic image corpus, a tokenizer and two random-init checkpoints (small scorer: `tiny` preset, large
scorer: `small` preset) in a temp dir, then scores the same records three ways. Times include loading the scorers
(in each actor) and, for Ray, starting the actors; Ray itself is started once beforehand and not timed, and one
untimed warm-up pass of the loop runs first. The loop runs with 1 torch thread (what each 1-CPU actor gets) and
with 2 threads. Each setting also scores the first batch alone, which separates the fixed cost (start-up, model
loading) from steady-state throughput: steady = (N - B) / (T_N - T_B).
Prints a table and writes bench/results/scoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from nvila_model.data.config import GenerateConfig
from nvila_model.data.generate import run_generate
from nvila_model.data.manifest import conversation_text, read_manifest
from nvila_model.deltaloss.config import RayConfig, ScoreConfig
from nvila_model.deltaloss.ray_pool import score_records_ray
from nvila_model.deltaloss.scorer import score_records_local
from nvila_model.deltaloss.stage import checkpoint_pair
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import train_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"
OFF = ("spatial", "text", "chart", "compare", "motion", "order", "flashes")


def build_corpus(root: Path, num_samples: int) -> tuple[list[dict], Path, Path]:
    """Records of the synthetic attributes/counting subsets, plus two random-init checkpoints."""
    subsets = {name: {"enabled": False} for name in OFF}
    subsets.update(attributes={"train": num_samples // 2}, counting={"train": num_samples - num_samples // 2})
    data = run_generate(GenerateConfig(subsets=subsets), root / "raw" / "synth")
    records = read_manifest(data / "train.jsonl")
    tokenizer = train_tokenizer([conversation_text(r["conversations"]) for r in records], 400)
    paths = []
    for role, preset in (("small", "tiny"), ("large", "small")):
        config = build_config(preset)
        torch.manual_seed(0)
        NVILAForConditionalGeneration(config).save_pretrained(str(root / role))
        NVILAProcessor(tokenizer, config).save_pretrained(root / role)
        paths.append(root / role)
    return records, paths[0], paths[1]


def timed_score(pair, records: list[dict], batch_size: int, num_actors: int) -> tuple[float, list[dict]]:
    """(seconds, rows) of one scoring call: the plain loop (0 actors) or a fresh Ray pool (actor start included)."""
    start = time.perf_counter()
    if num_actors == 0:
        out = score_records_local(pair, records, batch_size)
    else:
        out, _ = score_records_ray(pair, records, batch_size, RayConfig(num_actors=num_actors))
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-dl-", dir="/tmp") as tmp:
        root = Path(tmp)
        records, small, large = build_corpus(root, args.num_samples)
        cfg = ScoreConfig(micro_batch_size=args.micro_batch_size)
        pair = checkpoint_pair(cfg, small, large, root / "raw" / "synth")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(root / "ray"), log_to_driver=False)
        rows, reference, threads = [], None, torch.get_num_threads()
        try:
            score_records_local(pair, records[: args.micro_batch_size], args.batch_size)  # warm-up, untimed
            settings = (("loop-1-thread", 0, 1), ("loop-2-threads", 0, 2), ("ray-1-actor", 1, 1),
                        ("ray-2-actors", 2, 1))
            for name, num_actors, num_threads in settings:
                torch.set_num_threads(num_threads)
                one_batch, _ = timed_score(pair, records[: args.batch_size], args.batch_size, num_actors)
                seconds, out = timed_score(pair, records, args.batch_size, num_actors)
                reference = reference or [r["score"] for r in out]
                same = max(abs(a - b) for a, b in zip(reference, [r["score"] for r in out], strict=True))
                rows.append({"setting": name, "actors": num_actors, "threads_each": num_threads, "samples": len(out),
                             "seconds": seconds,
                             "samples_per_s": len(out) / seconds, "max_abs_score_diff_vs_loop": same,
                             "fixed_seconds": one_batch - args.batch_size * (seconds - one_batch) / (len(out) -
                                                                                                    args.batch_size),
                             "steady_samples_per_s": (len(out) - args.batch_size) / max(seconds - one_batch, 1e-9)})
        finally:
            ray.shutdown()
            torch.set_num_threads(threads)
    base = rows[0]["samples_per_s"]
    print(f"{'setting':<16}{'samples':>8}{'seconds':>9}{'samples/s':>10}{'speedup':>9}{'fixed s':>9}"
          f"{'steady/s':>10}{'max |diff|':>12}")
    for row in rows:
        row["speedup_vs_loop"] = row["samples_per_s"] / base
        print(f"{row['setting']:<16}{row['samples']:>8}{row['seconds']:>9.1f}{row['samples_per_s']:>10.2f}"
              f"{row['speedup_vs_loop']:>8.2f}x{row['fixed_seconds']:>9.1f}{row['steady_samples_per_s']:>10.2f}"
              f"{row['max_abs_score_diff_vs_loop']:>12.2e}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "bench": "deltaloss scoring", "small_preset": "tiny", "large_preset": "small", "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size, "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0], "machine": platform.machine(), "results": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
