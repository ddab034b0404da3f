"""Sequence packing vs padding, and varlen attention vs a block-diagonal mask: padding ratio and training
tokens/s on the same samples, in the same run, the settings alternating step by step.

- `padded`: one sample per row, padded, SDPA with the padding mask (`packing: false`);
- `masked-rows-<budget>`: rows of at most `budget` tokens, first-fit, padded to the widest, SDPA with the dense
  block-diagonal mask transformers builds from the position ids (the CPU layout before sdpa_varlen; built here only);
- `varlen`: the stages' layout, one row per micro-batch with the samples' boundaries, sdpa_varlen.

    python bench/packing.py [--samples 128] [--batch-size 16] [--budgets 256] [--preset small] [--uncompressed]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nvila_model.data.collate import PackingCollator, PaddingCollator, model_inputs
from nvila_model.data.config import GenerateConfig
from nvila_model.data.generate import run_generate
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import read_manifest
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import train_tokenizer

RESULTS = Path(__file__).parent / "results"


def masked_rows(samples: list[dict], budget: int, pad_id: int) -> dict:
    """The samples first-fit into rows of at most max(budget, the longest) tokens, each row padded to the widest,
    positions restarting per sample (transformers masks each row block-diagonally from them)."""
    lengths = [s["input_ids"].shape[0] for s in samples]
    width_cap = max(budget, *lengths)
    rows: list[list[int]] = []
    for i in sorted(range(len(samples)), key=lambda i: -lengths[i]):
        row = next((r for r in rows if sum(lengths[j] for j in r) + lengths[i] <= width_cap), None)
        if row is None:
            rows.append([i])
        else:
            row.append(i)
    width = max(sum(lengths[j] for j in r) for r in rows)
    packed = [PackingCollator()([samples[j] for j in r]) for r in rows]
    pad = {"input_ids": pad_id, "labels": -100, "position_ids": 0}
    batch = {k: torch.cat([torch.nn.functional.pad(b[k], (0, width - b[k].shape[1]), value=v) for b in packed])
             for k, v in pad.items()}
    order = [j for r in rows for j in r]
    return batch | {"attention_mask": None, "pixel_values": torch.cat([b["pixel_values"] for b in packed]),
                    "media_layout": torch.cat([b["media_layout"] for b in packed]),
                    "sample_lengths": torch.tensor([lengths[j] for j in order]),
                    "ids": [samples[j].get("id") for j in order]}


def train_alternating(models: dict[str, torch.nn.Module], settings: dict[str, list[dict]],
                      lr: float = 1e-3) -> dict[str, dict[str, float]]:
    """One optimizer step per batch for each setting, alternating settings step by step so that load from other
    processes on the machine hits both alike; returns per setting real (non-pad) tokens/s and padding ratio."""
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=lr) for name, m in models.items()}
    seconds = dict.fromkeys(settings, 0.0)
    losses = {}
    for step in range(len(next(iter(settings.values())))):
        for name, batches in settings.items():
            model, optimizer = models[name], optimizers[name]
            model.train()
            start = time.perf_counter()
            loss = model(**model_inputs(batches[step])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[name] += time.perf_counter() - start
            losses[name] = float(loss.detach())
    out = {}
    for name, batches in settings.items():
        real = sum(int(b["sample_lengths"].sum()) for b in batches)
        slots = sum(b["input_ids"].numel() for b in batches)
        out[name] = {"steps": len(batches), "rows": sum(b["input_ids"].shape[0] for b in batches),
                     "real_tokens": real, "token_slots": slots, "padding_ratio": round(1 - real / slots, 4),
                     "seconds": round(seconds[name], 3), "tokens_per_s": round(real / seconds[name], 1),
                     "samples_per_s": round(sum(len(b["ids"]) for b in batches) / seconds[name], 2),
                     "last_loss": round(losses[name], 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--budgets", default="256", help="row budgets (tokens) of the masked-rows layouts")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per optimizer step (every setting)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--uncompressed", action="store_true",
                        help="Dynamic-S2 without token compression (the frontier's s2_uncompressed): long samples")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = run_generate(GenerateConfig(scale=0.3), Path(tmp) / "synth")
        records = read_manifest(root / "train.jsonl")
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0))[: args.samples]
        records = [records[i] for i in order.tolist()]  # a mix of every subset, as a shuffled epoch gives
        config = build_config(args.preset, **({"projector": "none", "dynamic_s2": True} if args.uncompressed else {}))
        texts = [t["value"] for r in records for t in r["conversations"]]
        processor = NVILAProcessor(train_tokenizer(texts, vocab_size=config.text_config.vocab_size), config)
        dataset = LlavaDataset(records, root, processor)
        samples = [s for s in (dataset[i] for i in range(len(dataset))) if s is not None]
    budgets = [int(b) for b in args.budgets.split(",")]
    groups = [samples[i:i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
    settings = {"padded": [PaddingCollator(processor.pad_id)(g) for g in groups]}
    for budget in budgets:
        settings[f"masked-rows-{budget}"] = [masked_rows(g, budget, processor.pad_id) for g in groups]
    settings["varlen"] = [PackingCollator()(g) for g in groups]
    models = {}
    for name in settings:
        torch.manual_seed(0)
        models[name] = NVILAForConditionalGeneration(config)
        models[name].set_attn_implementation("sdpa_varlen" if name == "varlen" else "sdpa")
    train_alternating(models, {k: v[:1] for k, v in settings.items()})  # warm-up, not reported
    rows = train_alternating(models, settings)
    lengths = [s["input_ids"].shape[0] for s in samples]
    print(f"packing bench, preset {args.preset}, {len(samples)} samples (lengths {min(lengths)}-{max(lengths)}), "
          f"{args.batch_size} samples/step, torch threads {torch.get_num_threads()}")
    print(f"{'setting':>16} {'rows':>6} {'pad ratio':>10} {'seconds':>8} {'tokens/s':>10} {'samples/s':>10}")
    for name, r in rows.items():
        print(f"{name:>16} {r['rows']:>6} {r['padding_ratio']:>10} {r['seconds']:>8} {r['tokens_per_s']:>10} "
              f"{r['samples_per_s']:>10}")
    speedup = {name: round(r["tokens_per_s"] / rows["padded"]["tokens_per_s"], 3) for name, r in rows.items()}
    print("training tokens/s relative to padded:", speedup)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "_".join(["packing", *([args.preset] if args.preset != "tiny" else []),
                     *(["s2_uncompressed"] if args.uncompressed else [])])
    (RESULTS / f"{name}.json").write_text(json.dumps({
        "preset": args.preset, "s2_uncompressed": args.uncompressed, "samples": len(samples),
        "batch_size": args.batch_size, "budgets": budgets, "runs": rows, "speedup_vs_padded": speedup},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
