"""Two stages at once, or one after the other: what the pipeline's scheduler relies on (tasks/stage_task.py).

The same training steps (tiny preset, the pipeline's packed batches, AdamW) run as
- A: one process with every core's thread (torch's intra-op threads), the way a stage runs alone;
- B: that many processes at once, one thread each, each doing the same number of steps (two independent stages).
The ratio of the work done per second (B over A) is what running independent stages side by side gains on this
machine; the per-step times show what each stage pays for sharing.

    python bench/parallel_stages.py [--steps 16] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_corpus, print_table, write_results  # noqa: E402


def worker(data: Path, tok_dir: Path, steps: int, batch_size: int, threads: int, seed: int, result: Path) -> None:
    """`steps` training steps on `threads` threads; writes the seconds of the steps after the first (warm-up)."""
    import torch

    torch.set_num_threads(threads)
    from nvila_model.data.collate import PackingCollator, model_inputs
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer
    from nvila_model.train.precision import resolve_attention

    config = build_config("tiny")
    processor = NVILAProcessor(load_tokenizer(tok_dir), config)
    records = read_manifest(data / "train.jsonl")
    random.Random(seed).shuffle(records)
    dataset = LlavaDataset(records[: (steps + 1) * batch_size], data, processor)
    samples = [dataset[i] for i in range(len(dataset))]
    collate = PackingCollator()
    batches = [model_inputs(collate(samples[i:i + batch_size])) for i in range(0, len(samples), batch_size)]
    torch.manual_seed(seed)
    model = NVILAForConditionalGeneration(config).train()
    model.set_attn_implementation(resolve_attention("auto"))  # as a stage does
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ready = result.with_suffix(".ready")
    ready.touch()
    while not result.with_suffix(".go").exists():  # every process starts its steps at the same moment
        time.sleep(0.01)
    seconds = []
    for batch in batches:
        began = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - began)
    result.write_text(json.dumps({"threads": torch.get_num_threads(), "step_s": seconds[1:]}))


def run_group(data: Path, tok_dir: Path, tmp: Path, name: str, processes: int, threads: int,
              args: argparse.Namespace) -> list[dict]:
    """`processes` workers at once (each with its own shuffle of the corpus); their results once all are done."""
    results = [tmp / f"{name}-{i}.json" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(data), str(tok_dir), str(result),
                               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                               "--threads", str(threads), "--seed", str(i)],
                              env=os.environ | {"TOKENIZERS_PARALLELISM": "false"}) for i, result in enumerate(results)]
    while not all(r.with_suffix(".ready").exists() for r in results):
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit(f"a {name} worker failed")
        time.sleep(0.05)
    for result in results:
        result.with_suffix(".go").touch()
    for proc in procs:
        if proc.wait():
            raise SystemExit(f"a {name} worker failed with {proc.returncode}")
    return [json.loads(r.read_text()) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, metavar=("DATA", "TOKENIZER", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data, tok_dir, result = (Path(p) for p in args.worker)
        worker(data, tok_dir, args.steps, args.batch_size, args.threads, args.seed, result)
        return

    from tasks.env import cpu_cores

    cores = cpu_cores()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data, tok_dir = make_corpus(tmp, scale=0.3)
        alone = run_group(data, tok_dir, tmp, "alone", 1, cores, args)
        shared = run_group(data, tok_dir, tmp, "shared", cores, 1, args)
    rows = []
    for label, group in ((f"1 process x {cores} threads", alone), (f"{cores} processes x 1 thread", shared)):
        mean = [sum(r["step_s"]) / len(r["step_s"]) for r in group]
        rows.append({"setting": label, "processes": len(group), "threads_each": group[0]["threads"],
                     "step_s_each": round(sum(mean) / len(mean), 4),
                     "steps_per_s_total": round(sum(1 / m for m in mean), 4)})
    gain = rows[1]["steps_per_s_total"] / rows[0]["steps_per_s_total"]
    slowdown = rows[1]["step_s_each"] / rows[0]["step_s_each"]
    print(f"parallel stages: tiny preset, {args.batch_size} samples per step, {args.steps} steps per process, "
          f"{cores} cores")
    print_table(rows, ["setting", "processes", "threads_each", "step_s_each", "steps_per_s_total"])
    print(f"work per second, side by side over alone: {gain:.2f}x; each stage's step {slowdown:.2f}x slower")
    write_results("parallel_stages", {"preset": "tiny", "batch_size": args.batch_size, "steps": args.steps,
                                      "cores": cores, "rows": rows, "throughput_gain": round(gain, 3),
                                      "per_stage_slowdown": round(slowdown, 3)})


if __name__ == "__main__":
    main()
