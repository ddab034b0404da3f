"""Sequence packing vs padding: padding ratio and training tokens/s on the same samples, in the same run."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nvila_model.data.collate import PackingCollator, PaddingCollator, model_inputs, pack_rows
from nvila_model.data.config import GenerateConfig
from nvila_model.data.generate import run_generate
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import read_manifest
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import train_tokenizer

RESULTS = Path(__file__).parent / "results"


class OneRowPerLongSample(PackingCollator):
    """The packing rule before: a sample over the budget alone in its row, the others in rows of the budget, every
    row padded to the widest (timed beside the collator when some sample is over the budget)."""

    def rows(self, lengths: list[int]) -> list[list[int]]:
        return pack_rows(lengths, self.max_tokens)


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
    parser.add_argument("--budgets", default="256,1024", help="packing budgets (tokens per row) to compare")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per optimizer step (both settings)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--uncompressed", action="store_true",
                        help="Dynamic-S2 without token compression (the frontier's s2_uncompressed), whose samples "
                             "are mostly longer than the budget")
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
    longest = max(s["input_ids"].shape[0] for s in samples)
    for budget in budgets:
        if longest > budget:  # samples over the budget: the rule before, beside the collator's
            settings[f"row-per-long-{budget}"] = [OneRowPerLongSample(processor.pad_id, budget)(g) for g in groups]
        settings[f"packed-{budget}"] = [PackingCollator(processor.pad_id, max_tokens=budget)(g) for g in groups]
    models = {}
    for name in settings:
        torch.manual_seed(0)
        models[name] = NVILAForConditionalGeneration(config)
    train_alternating(models, {k: v[:1] for k, v in settings.items()})  # warm-up, not reported
    rows = train_alternating(models, settings)
    lengths = [s["input_ids"].shape[0] for s in samples]
    print(f"packing bench, preset {args.preset}, {len(samples)} samples (lengths {min(lengths)}-{max(lengths)}), "
          f"{args.batch_size} samples/step, torch threads {torch.get_num_threads()}")
    print(f"{'setting':>12} {'rows':>6} {'pad ratio':>10} {'seconds':>8} {'tokens/s':>10} {'samples/s':>10}")
    for name, r in rows.items():
        print(f"{name:>12} {r['rows']:>6} {r['padding_ratio']:>10} {r['seconds']:>8} {r['tokens_per_s']:>10} "
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
