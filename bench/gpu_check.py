"""`make gpu-check`: run every GPU path of the pipeline on one H100/H200-class GPU in at most 8 minutes.

Checks (bench/gpu_checks.py, one function each; a failing check is reported and the others still run):
bf16 vs FP8 training throughput and loss on the same data and steps; one packed row through flash-attn varlen vs
per-sample SDPA losses; eval and generate on the GPU; W8A8 vision tower (torchao) + AWQ W4A16 LLM TTFT and decode
tokens/s against fp32 and bf16; QLoRA vs LoRA peak memory; ZeRO-3 on the one GPU (its own process).
The model is the `gpu-check` preset (~0.35B parameters, built from config, no downloads) on a generated corpus.

Prints a table, writes bench/results/gpu_check.json, exits 1 on any failure or past the time budget, and 2 (one
line) on a machine without a CUDA GPU. `--device cpu --preset tiny --only ...` runs the same functions on a CPU
(the test suite does, to catch mistakes before a GPU ever sees them).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
BUDGET_S = 480
CHECKS = ("train_bf16_vs_fp8", "flash_varlen_vs_sdpa", "eval_generate", "quantized_inference",
          "qlora_vs_lora_memory", "zero3_one_gpu")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpu-check")
    parser.add_argument("--steps", type=int, default=30, help="training steps per precision")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the functions)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {CHECKS}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--probe", action="store_true", help="only say whether there is a GPU (exit 0 or 2)")
    parser.add_argument("--zero3-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_zero3(ws: Any) -> dict[str, Any]:
    """ZeRO-3 on one GPU in a child process (torchrun's environment for a world of one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                        "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    cmd = [sys.executable, __file__, "--zero3-child", "--workdir", str(ws.root), "--preset", ws.preset,
           "--steps", str(max(3, ws.steps // 3)), "--batch-size", str(ws.batch_size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=BUDGET_S)
    if proc.returncode:
        raise RuntimeError(f"ZeRO-3 child exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    meta = json.loads((ws.root / "zero3" / "meta.json").read_text())
    if not (meta["deepspeed"].endswith("zero3.json") and meta["built_under_zero_init"]):
        raise AssertionError(f"the stage ran with deepspeed {meta['deepspeed']}, "
                             f"zero.Init {meta['built_under_zero_init']}")
    return {"final_loss": meta["final_loss"], "samples_per_s": meta["samples_per_s"], "steps": meta["global_steps"],
            "built_under_zero_init": meta["built_under_zero_init"]}


def run_checks(ws: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    import gpu_checks

    functions = {"train_bf16_vs_fp8": gpu_checks.check_train_precisions,
                 "flash_varlen_vs_sdpa": gpu_checks.check_flash_varlen, "eval_generate": gpu_checks.check_eval_generate,
                 "quantized_inference": gpu_checks.check_quantized_inference,
                 "qlora_vs_lora_memory": gpu_checks.check_qlora_memory, "zero3_one_gpu": run_zero3}
    results = {}
    for name in names:
        started = time.perf_counter()
        try:
            figures = {"ok": True, **functions[name](ws)}
        except Exception as exc:  # a failing check is reported; the others still run
            traceback.print_exc()
            figures = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        results[name] = {"seconds": round(time.perf_counter() - started, 1), **figures}
        print(f"gpu_check: {name}: {'ok' if figures['ok'] else 'FAILED'} ({results[name]['seconds']} s)", flush=True)
    return results


def summary(result: dict[str, Any]) -> str:
    if not result["ok"]:
        return result["error"]
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
             if k not in ("ok", "seconds") and isinstance(v, int | float | str) and len(str(v)) < 40]
    return ", ".join(shown)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    width = max(len(name) for name in results)
    print(f"\n{'check'.ljust(width)}  ok    seconds  figures")
    for name, result in results.items():
        print(f"{name.ljust(width)}  {'yes' if result['ok'] else 'NO ':<4}  {result['seconds']:>7}  {summary(result)}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}); nothing to check", file=sys.stderr)
        return 2
    if args.probe:
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        print(f"gpu_check: unknown check(s) {unknown}; choose from {CHECKS}", file=sys.stderr)
        return 2
    import gpu_checks

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root = args.workdir or Path(tmp)
        if args.zero3_child:
            ws = gpu_checks.Workspace(root, device, args.preset, args.steps, args.batch_size,
                                      root / "corpus" / "raw" / "synth", root / "corpus" / "tokenizer")
            gpu_checks.zero3_child(ws)
            return 0
        ws = gpu_checks.setup(root, device, args.preset, args.steps, args.batch_size)
        results = run_checks(ws, names)
    total = time.perf_counter() - started
    print_table(results)
    payload = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "preset": args.preset, "steps": args.steps, "batch_size": args.batch_size,
               "total_seconds": round(total, 1), "budget_seconds": BUDGET_S, "checks": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    failed = [n for n, r in results.items() if not r["ok"]]
    over = device.type == "cuda" and total > BUDGET_S
    print(f"wrote {args.out}: {len(results) - len(failed)}/{len(results)} checks passed in {total:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + (f"; over the {BUDGET_S} s budget" if over else ""))
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
