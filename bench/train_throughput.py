"""Training throughput and peak memory: NVILA (STC + Dynamic-S2) vs the uncompressed baseline (projector `none`,
fixed resize) vs transformers' LlavaForConditionalGeneration + Trainer at equal component sizes; same data, same run.

    python bench/train_throughput.py [--preset tiny] [--steps 30] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_corpus, peak_rss_mb, print_table, run_children, write_results  # noqa: E402

VARIANTS = {
    "nvila": {"projector": "mlp_downsample", "dynamic_s2": True},
    "s2_uncompressed": {"projector": "none", "dynamic_s2": True},
    "nvila_no_s2": {"projector": "mlp_downsample", "dynamic_s2": False},
    "baseline": {"projector": "none", "dynamic_s2": False},
    "llava_hf": {"projector": "none", "dynamic_s2": False},
}
IMAGE_SUBSETS = ["attributes", "counting", "spatial", "text", "chart"]


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, TrainerCallback, TrainingArguments

    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer
    from nvila_model.train.hf_trainer import NVILATrainer

    torch.manual_seed(0)
    config = build_config(args.preset, **VARIANTS[args.child])
    processor = NVILAProcessor(load_tokenizer(args.tokenizer), config)
    records = [r for r in read_manifest(Path(args.data) / "train.jsonl") if r["subset"] in IMAGE_SUBSETS]
    dataset = LlavaDataset(records, Path(args.data), processor)
    if args.child == "llava_hf":
        model = LlavaForConditionalGeneration(LlavaConfig(
            vision_config=config.vision_config.to_dict() | {"model_type": "siglip_vision_model"},
            text_config=config.text_config.to_dict() | {"model_type": "qwen2"},
            image_token_index=config.image_token_id, image_seq_length=config.tokens_per_tile,
            vision_feature_select_strategy="full", vision_feature_layer=config.vision_select_layer))
        lrs = {"model": 1e-3, "lm_head": 1e-3}
    else:
        model = NVILAForConditionalGeneration(config)
        lrs = {"vision_tower": 1e-4, "projector": 1e-3, "language_model": 1e-3}

    class Clock(TrainerCallback):
        """Times steps after a warm-up of 3."""

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == 3:
                self.t0 = time.perf_counter()

    clock = Clock()
    collator = LlavaCollator(processor.pad_id, keep_layout=args.child != "llava_hf")
    trainer = NVILATrainer(
        model=model, module_lrs=lrs, train_dataset=dataset, data_collator=collator,
        callbacks=[clock], args=TrainingArguments(
            output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            save_strategy="no", report_to="none", remove_unused_columns=False, use_cpu=True, bf16=args.bf16,
            disable_tqdm=True, logging_steps=10**6, seed=0))
    trainer.train()
    seconds = time.perf_counter() - clock.t0
    samples = (args.steps - 3) * args.batch_size
    tokens = sum(int(dataset[i]["input_ids"].shape[0]) for i in range(64)) / 64
    result = {"variant": args.child, "samples_per_s": samples / seconds, "peak_rss_mb": peak_rss_mb(),
              "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "mean_seq_len": tokens}
    Path(args.result).write_text(json.dumps(result))


class LlavaCollator:
    """The padding collator; for the HF LLaVA model without `media_layout` (it takes one tile per image)."""

    def __init__(self, pad_id: int, keep_layout: bool):
        from nvila_model.data.collate import PaddingCollator

        self.pad, self.keep_layout = PaddingCollator(pad_id), keep_layout

    def __call__(self, samples):
        batch = self.pad(samples)
        if not self.keep_layout:
            del batch["media_layout"]
        return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bf16", action="store_true", help="train under bf16 autocast")
    parser.add_argument("--child"), parser.add_argument("--result"), parser.add_argument("--data")
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        data, tok = make_corpus(Path(tmp), scale=0.3)
        extra = ["--preset", args.preset, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                 "--data", str(data), "--tokenizer", str(tok), *(["--bf16"] if args.bf16 else [])]
        results = run_children(__file__, list(VARIANTS), extra)
    base = results["baseline"]["samples_per_s"]
    rows = [r | {"speedup_vs_baseline": r["samples_per_s"] / base,
                 "memory_vs_baseline": r["peak_rss_mb"] / results["baseline"]["peak_rss_mb"]} for r in results.values()]
    print_table(rows, ["variant", "samples_per_s", "speedup_vs_baseline", "peak_rss_mb", "memory_vs_baseline",
                       "mean_seq_len", "params_m"])
    write_results("train_throughput", {"preset": args.preset, "steps": args.steps, "batch_size": args.batch_size,
                                       "bf16": args.bf16, "rows": rows})


if __name__ == "__main__":
    main()
