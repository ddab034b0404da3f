"""Deployment benchmark: TTFT (vision tower, LLM prefill), decode tokens/s and peak memory, fp32 vs W8A8 vision
tower vs W8A8 + W4A16 LLM, for an image prompt and a video prompt in the same run, with test accuracy beside them.

Timing rounds interleave the variants in one process (fair on a busy shared CPU); peak memory is measured in a
child process per variant so it is that variant's alone. With --checkpoint and --data
(a trained checkpoint and its validated data) accuracy on the test split is measured per variant; without them a
small preset is built fresh on freshly generated synthetic data: timing only, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "deploy.json"
VARIANTS = {"fp32": None, "w8a8": {"llm": {"enabled": False}}, "w8a8_w4a16": {}}


def fresh_checkpoint(preset: str, root: Path) -> tuple[Path, Path]:
    """Synthetic data + an untrained `preset` model with a tokenizer trained on that data's text."""
    from nvila_model.data.config import GenerateConfig
    from nvila_model.data.generate import run_generate
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import train_tokenizer

    data_dir = run_generate(GenerateConfig(scale=0.05), root / "data" / "synth")
    records = read_manifest(data_dir / "train.jsonl")
    config = build_config(preset)
    tokenizer = train_tokenizer([t["value"] for r in records for t in r["conversations"]],
                                vocab_size=config.text_config.vocab_size)
    config.text_config.eos_token_id, config.text_config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(0)
    path = root / "checkpoint"
    NVILAForConditionalGeneration(config).save_pretrained(str(path))
    NVILAProcessor(tokenizer, config).save_pretrained(path)
    return path, data_dir / "train.jsonl"


def quantize_variants(checkpoint: Path, calib: Path, root: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The variant directories: the fp32 checkpoint itself and the two quantized exports."""
    from nvila_model.params import parse
    from nvila_model.quant.config import QuantizeConfig
    from nvila_model.quant.quantize import run_quantize

    paths = {}
    for name, changes in VARIANTS.items():
        if changes is None:
            paths[name] = checkpoint
            continue
        llm = {"group_size": args.group_size, "num_calib_samples": args.calib_samples, **changes.get("llm", {})}
        values = {"num_threads": args.threads, "llm": llm, "device": "cpu"}  # a CPU benchmark
        paths[name] = run_quantize(parse(QuantizeConfig, values), checkpoint, root / name, calib)
    return paths


def prompts(processor, data: Path) -> dict[str, dict]:
    """One image prompt and one video prompt from the data's test (else train) split."""
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest, record_kind

    split = data.with_name("test.jsonl") if data.with_name("test.jsonl").is_file() else data
    records = read_manifest(split)
    out = {}
    for kind in ("image", "video"):
        record = next(r for r in records if record_kind(r) == kind)
        raw = LlavaDataset([record], data.parent, processor=None,
                           num_video_frames=processor.config.num_video_frames).load_raw(0)
        out[kind] = processor.encode(raw["conversations"][:1], raw["images"] or None, raw["video"],
                                     add_generation_prompt=True)
    return out


@torch.inference_mode()
def time_once(model, sample: dict, decode_tokens: int) -> dict[str, float]:
    """Seconds of the vision tower (+ projector) and of the LLM prefill, and greedy decode tokens/s (KV cache)."""
    ids = sample["input_ids"][None]
    mask = (ids == model.config.image_token_id) | (ids == model.config.video_token_id)
    t0 = time.perf_counter()
    feats = torch.cat(model.encode_media(sample["pixel_values"], sample["media_layout"]))
    t1 = time.perf_counter()
    embeds = model.get_input_embeddings()(ids.masked_fill(mask, 0))
    embeds = embeds.masked_scatter(mask[..., None], feats.to(embeds.dtype))
    t2 = time.perf_counter()
    out = model.language_model(inputs_embeds=embeds, use_cache=True)
    t3 = time.perf_counter()
    for _ in range(decode_tokens):
        token = out.logits[:, -1:].argmax(-1)
        out = model.language_model(input_ids=token, cache=out.cache, use_cache=True)
    t4 = time.perf_counter()
    return {"vision": t1 - t0, "prefill": t3 - t2, "decode_tok_s": decode_tokens / (t4 - t3)}


def time_variants(models: dict, samples: dict, decode_tokens: int, repeats: int) -> dict[str, dict]:
    """Medians over `repeats` rounds after a warm-up; every round visits every variant in turn, so a busy shared
    CPU slows all variants alike instead of whichever ran during the busy minute."""
    runs: dict[tuple[str, str], list[dict]] = {(v, k): [] for v in models for k in samples[v]}
    for round_ in range(repeats + 1):
        for variant, model in models.items():
            for kind, sample in samples[variant].items():
                timing = time_once(model, sample, decode_tokens)
                if round_:
                    runs[variant, kind].append(timing)
    results: dict[str, dict] = {v: {} for v in models}
    for (variant, kind), timings in runs.items():
        vision = statistics.median(t["vision"] for t in timings)
        prefill = statistics.median(t["prefill"] for t in timings)
        sample = samples[variant][kind]
        results[variant][kind] = {
            "vision_ms": 1000 * vision, "prefill_ms": 1000 * prefill, "ttft_ms": 1000 * (vision + prefill),
            "decode_tok_s": statistics.median(t["decode_tok_s"] for t in timings),
            "prompt_tokens": int(sample["input_ids"].shape[0]), "tiles": int(sample["pixel_values"].shape[0])}
    return results


def child(args: argparse.Namespace) -> None:
    """Print one variant's peak RSS above the pre-load baseline while it loads and answers both prompts once
    (sampled: ru_maxrss would carry the parent's peak across exec)."""
    from nvila_model.evaluate import predict  # noqa: F401  (imports before the baseline: peak is the model's)
    from nvila_model.finetune.memory import PeakMemory
    from nvila_model.quant import awq_adapter
    from nvila_model.quant.infer import load_variant

    awq_adapter._awq()
    torch.set_num_threads(args.threads)
    with PeakMemory(interval_s=0.002) as memory:
        model, processor = load_variant(args.child, "fp32" if args.variant == "fp32" else "quantized", "cpu")
        for sample in prompts(processor, Path(args.data)).values():
            time_once(model.eval(), sample, decode_tokens=args.decode_tokens)
    print(json.dumps({"peak_rss_mb": memory.peak_bytes / 2**20}))


def absolute_media(record: dict, root: Path) -> dict:
    """The record with its media paths made absolute (evaluate's predict reads them without a media root)."""
    record = dict(record)
    for key in ("image", "video"):
        if record.get(key):
            record[key] = str(root / record[key])
    if record.get("images"):
        record["images"] = [str(root / p) for p in record["images"]]
    return record


def accuracy(model, processor, data: Path, limit: int) -> dict[str, float]:
    """Exact-match accuracy on the test split (first `limit` records per subset), with evaluate's own scorer."""
    from collections import defaultdict

    from nvila_model.data.manifest import default_media_root, read_manifest
    from nvila_model.evaluate import predict, score_predictions

    seen: dict[str, int] = defaultdict(int)
    records = []
    for record in read_manifest(data.with_name("test.jsonl")):
        subset = record.get("subset", "all")
        if seen[subset] < limit:
            seen[subset] += 1
            records.append(absolute_media(record, default_media_root(data)))
    rows, _ = predict(model, processor, records, batch_size=8, max_new_tokens=8)
    return score_predictions(rows)


def peak_memory(path: Path, variant: str, args: argparse.Namespace, data: Path) -> float:
    """Peak MB of `variant` measured in a child process of its own."""
    cmd = [sys.executable, __file__, "--child", str(path), "--variant", variant, "--data", str(data),
           "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"variant {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def measure(paths: dict[str, Path], args: argparse.Namespace, data: Path, trained: bool) -> dict[str, dict]:
    """Timings (interleaved, this process), peak memory (a child per variant) and accuracy (when trained)."""
    from nvila_model.quant.infer import load_variant

    loaded = {v: load_variant(p, "fp32" if v == "fp32" else "quantized", "cpu") for v, p in paths.items()}
    models = {v: model.eval() for v, (model, _) in loaded.items()}
    samples = {v: prompts(processor, data) for v, (_, processor) in loaded.items()}
    results = time_variants(models, samples, args.decode_tokens, args.repeats)
    for variant, (model, processor) in loaded.items():
        results[variant]["peak_rss_mb"] = peak_memory(paths[variant], variant, args, data)
        if trained:
            results[variant]["accuracy"] = accuracy(model, processor, data, args.limit)
    return results


def report(results: dict[str, dict], note: str) -> None:
    print(note)
    head = f"{'variant':<12} {'prompt':<6} {'tiles':>5} {'vision ms':>10} {'prefill ms':>11} {'TTFT ms':>9} " \
           f"{'TTFT x':>7} {'decode tok/s':>13} {'decode x':>9} {'peak MB':>8} {'acc':>6}"
    print(head)
    for variant, res in results.items():
        for kind in ("image", "video"):
            row, base = res[kind], results["fp32"][kind]
            acc = res.get("accuracy", {}).get("acc_mean")
            print(f"{variant:<12} {kind:<6} {row['tiles']:>5} {row['vision_ms']:>10.2f} {row['prefill_ms']:>11.2f} "
                  f"{row['ttft_ms']:>9.2f} {base['ttft_ms'] / row['ttft_ms']:>7.2f} {row['decode_tok_s']:>13.1f} "
                  f"{row['decode_tok_s'] / base['decode_tok_s']:>9.2f} {res['peak_rss_mb']:>8.1f} "
                  f"{'' if acc is None else f'{acc:.3f}':>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained NVILA checkpoint (else a fresh small preset)")
    parser.add_argument("--data", type=Path, help="its validated train.jsonl (test.jsonl beside it for accuracy)")
    parser.add_argument("--preset", default="small", help="preset built fresh when no checkpoint is given")
    parser.add_argument("--group-size", type=int, default=32, help="AWQ group size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, oversubscribed CPU 2 threads ran ~6x slower)")
    parser.add_argument("--calib-samples", type=int, default=32, help="AWQ calibration texts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, default=20, help="test records per subset for accuracy")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if (args.checkpoint is None) != (args.data is None):
        parser.error("give --checkpoint and --data together, or neither")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trained = args.checkpoint is not None
        checkpoint, data = (args.checkpoint, args.data) if trained else fresh_checkpoint(args.preset, Path(tmp))
        load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        note = (f"trained checkpoint {checkpoint}, accuracy on {data.with_name('test.jsonl')}" if trained else
                f"fresh untrained '{args.preset}' preset on generated synthetic data: timing only, no accuracy")
        note += f"; {args.threads} thread(s), {load} at start"
        started = time.perf_counter()
        paths = quantize_variants(checkpoint, data, Path(tmp), args)
        quantize_s = time.perf_counter() - started
        sizes = {n: json.loads((p / "meta.json").read_text())["sizes"] for n, p in paths.items() if n != "fp32"}
        results = measure(paths, args, data, trained)
    report(results, note)
    for name, size in sizes.items():
        total = size["total"]
        print(f"{name}: weights {total['before_bytes'] / 2**20:.2f} -> {total['after_bytes'] / 2**20:.2f} MiB "
              f"({total['ratio']:.2f}x); vision {size['vision_tower']['ratio']:.2f}x, "
              f"LLM {size['language_model']['ratio']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"note": note, "threads": args.threads, "quantize_seconds": round(quantize_s, 2),
                                   "results": results, "sizes": sizes}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
