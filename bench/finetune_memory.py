"""Fine-tuning cost per mode in one run: trainable parameters, peak memory and time per step (full, LN, LoRA, LN+LoRA,
and QLoRA where bitsandbytes supports the hardware), each mode in its own child process so peaks do not mix.

Without --checkpoint/--data a fresh small preset is fine-tuned on freshly generated synthetic data (cost only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "finetune_memory.json"
MODES = ("full", "ln", "lora", "ln_lora", "ln_qlora")


def child(args: argparse.Namespace) -> None:
    from nvila_model.finetune.config import FinetuneConfig
    from nvila_model.finetune.run import run_finetune

    cfg = FinetuneConfig(mode=args.mode, max_steps=args.steps, batch_size=args.batch_size, logging_steps=args.steps,
                         num_threads=args.threads, precision=args.precision)
    out = run_finetune(cfg, args.checkpoint, args.data, args.out)
    meta = json.loads((out / "meta.json").read_text())
    print(json.dumps(meta))


def run_mode(mode: str, args: argparse.Namespace, checkpoint: Path, data: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--mode", mode, "--checkpoint", str(checkpoint), "--data", str(data),
           "--out", str(out / mode), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--precision", args.precision, "--child"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        refusal = [line for line in done.stderr.splitlines() if line.startswith("ValueError")]
        if refusal:
            return {"mode": mode, "refused": refusal[-1]}
        raise RuntimeError(f"mode {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def paper_scale_states(preset: str) -> dict[str, float]:
    """GB of weights + grads + AdamW moments per mode for `preset` (built on the meta device: nothing allocated)."""
    from nvila_model.finetune.config import FinetuneConfig
    from nvila_model.finetune.memory import model_state_bytes
    from nvila_model.finetune.modes import apply_mode
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config

    states = {}
    for mode in MODES:
        with torch.device("meta"):
            model = NVILAForConditionalGeneration(build_config(preset))
        qlora = mode.endswith("qlora")
        apply_mode(model, FinetuneConfig(mode=mode.replace("qlora", "lora")))  # NF4 itself needs the GPU
        states[mode] = model_state_bytes(model, nf4_llm=qlora) / 1e9
    return states


def report(rows: list[dict], note: str) -> None:
    print(note)
    print(f"{'mode':<9} {'trainable':>10} {'share':>8} {'peak MB':>8} {'vs full':>8} {'state MB':>9} {'s/step':>7} "
          f"{'loss':>7}")
    full = next((r for r in rows if r["mode"] == "full" and "refused" not in r), None)
    for row in rows:
        if "refused" in row:
            print(f"{row['mode']:<9} refused: {row['refused']}")
            continue
        peak = row["peak_memory_bytes"] / 2**20
        ratio = full["peak_memory_bytes"] / max(row["peak_memory_bytes"], 1) if full else float("nan")
        print(f"{row['mode']:<9} {row['trainable_params']['total']:>10} {row['trainable_share']:>8.4f} {peak:>8.1f} "
              f"{ratio:>7.2f}x {row['model_state_bytes'] / 2**20:>9.1f} {row['seconds_per_step']:>7.3f} "
              f"{row['final_loss']:>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="an NVILA checkpoint (else a fresh small preset)")
    parser.add_argument("--data", type=Path, help="a LLaVA train manifest for it")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | auto")
    parser.add_argument("--paper-preset", default="nvila-8b", help="preset whose model-state memory is computed")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if (args.checkpoint is None) != (args.data is None):
        parser.error("give --checkpoint and --data together, or neither")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is None:
            from deploy import fresh_checkpoint

            checkpoint, data = fresh_checkpoint(args.preset, Path(tmp))
            note = f"fresh '{args.preset}' preset on generated synthetic data"
        else:
            checkpoint, data = args.checkpoint, args.data
            note = f"{checkpoint} on {data}"
        rows = [run_mode(mode, args, checkpoint, data, Path(tmp)) for mode in MODES]
    kind = rows[0].get("peak_memory_kind", "?")
    note += f", {args.steps} steps, batch {args.batch_size}, precision {args.precision}, peak = {kind} in training"
    report(rows, note)
    states = paper_scale_states(args.paper_preset)
    print(f"{args.paper_preset} weights + grads + AdamW moments (fp32, activations excluded), GB: " +
          ", ".join(f"{m} {gb:.1f} ({states['full'] / gb:.2f}x less than full)" for m, gb in states.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"note": note, "rows": rows, f"{args.paper_preset}_state_gb": states}, indent=2)
                       + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
