"""Model FLOPs utilisation of a training step on this CPU: the FLOPs of one optimizer step (forward + backward,
counted by torch's FlopCounterMode on the real batch, packed as the training stages pack it: one row per
micro-batch, no padding, so no FLOP is spent on a pad) over its measured time, against this machine's measured peak
(a large fp32 and a bf16 matmul on the same threads). Optionally whether bf16 autocast and torch.compile pay here:
the whole model, and each vision-encoder and LLM decoder layer on its own (dynamic shapes: tile counts and packed
row lengths change every step).

    python bench/mfu.py [--preset small] [--steps 12] [--batch-size 16] [--threads 2] [--compile] [--bf16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_corpus, print_table, write_results  # noqa: E402

IMAGE_SUBSETS = ["attributes", "counting", "spatial", "text", "chart"]


def matmul_peak(dtype, size: int, repeats: int) -> float:
    """FLOP/s of a square matmul of `size` in `dtype` (best of `repeats`): this machine's practical peak."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def cpu_kind() -> str:
    """This CPU's bf16 hardware, which decides whether autocast could pay: 'amx' (tiles), 'avx512bf16' (dot
    products only) or 'nobf16'. The results file is named by it, so figures from different hosts sit side by side."""
    import torch

    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    return "avx512bf16" if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() else "nobf16"


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def step_flops(model, batch) -> int:
    """FLOPs of one forward + backward on `batch` (matmuls, convolutions, attention: what FlopCounterMode counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(model, batches, optimizer, autocast: bool) -> float:
    """Seconds per optimizer step over `batches` after one warm-up step (two for a compiled model's first calls)."""
    import torch

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[2:]:
        step(batch)
    return (time.perf_counter() - start) / (len(batches) - 2)


def main() -> None:
    import torch

    from nvila_model.data.collate import PackingCollator
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer
    from nvila_model.train.precision import resolve_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="also time the model under torch.compile, whole and layer by layer")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (slow where the CPU lacks bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # A CPU without bf16 instructions runs a bf16 matmul about 100x slower than fp32: a smaller one measures it.
    peaks = {"fp32": matmul_peak(torch.float32, 2048, 8), "bf16": matmul_peak(torch.bfloat16, 512, 2)}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, tok = make_corpus(Path(tmp), scale=0.3)
        config = build_config(args.preset)
        processor = NVILAProcessor(load_tokenizer(tok), config)
        records = [r for r in read_manifest(data / "train.jsonl") if r["subset"] in IMAGE_SUBSETS]
        dataset = LlavaDataset(records, data, processor)
        collate = PackingCollator()
        batches = [collate([dataset[(i * args.batch_size + j) % len(dataset)] for j in range(args.batch_size)])
                   for i in range(args.steps + 2)]
        modes = [("fp32", False, None)]
        modes += [("bf16 autocast", True, None)] if args.bf16 else []
        if args.compile:
            modes += [("fp32 + torch.compile", False, "model"), ("fp32 + torch.compile per layer", False, "layers")]
        for name, autocast, compiled in modes:
            torch.manual_seed(0)
            model = NVILAForConditionalGeneration(config).train()
            model.set_attn_implementation(resolve_attention("auto"))  # the stages' kernel for a packed row
            flops = step_flops(model, batches[0])
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            runner = torch.compile(model) if compiled == "model" else model
            if compiled == "layers":
                for layer in [*model.vision_tower.encoder.layers[: model.vision_layers_used],
                              *model.language_model.get_decoder().layers]:
                    layer.compile(dynamic=True)
            try:
                seconds = measure(runner, batches, optimizer, autocast)
            except Exception as exc:  # torch.compile's failures are findings for the table, not a crash of the bench
                if not compiled:
                    raise
                reason = " ".join(str(exc).split())[:160]
                print(f"{name}: failed: {type(exc).__name__}: {reason}", flush=True)
                rows.append({"mode": name, "failed": f"{type(exc).__name__}: {reason}"})
                continue
            peak = peaks["bf16" if autocast else "fp32"]
            print(f"{name}: {seconds:.2f} s per step, {flops / 1e9:.1f} GFLOP per step", flush=True)
            rows.append({"mode": name, "step_s": seconds, "gflop_per_step": flops / 1e9,
                         "achieved_gflops": flops / seconds / 1e9, "peak_gflops": peak / 1e9,
                         "mfu": flops / seconds / peak, "params_m": sum(p.numel() for p in model.parameters()) / 1e6})
    base = rows[0]["step_s"]
    rows = [r | {"speedup_vs_fp32": base / r["step_s"]} if "step_s" in r else r for r in rows]
    print_table(rows, ["mode", "step_s", "speedup_vs_fp32", "gflop_per_step", "achieved_gflops", "peak_gflops",
                       "mfu", "params_m", "failed"])
    write_results(f"mfu_{args.preset}_{cpu_kind()}", {
        "preset": args.preset, "cpu": cpu_model(), "batch_size": args.batch_size, "threads": args.threads,
        "peak_gflops": {k: v / 1e9 for k, v in peaks.items()}, "rows": rows})

if __name__ == "__main__":
    main()
