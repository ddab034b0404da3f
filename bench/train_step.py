"""One training step on the tiny preset, and what the two CPU savings of the training path take off it, same run:
- the loss with the LM head on the supervised positions only (the model's training forward) against the LLM's own
  loss over every position (what `Qwen2ForCausalLM` computes with labels), alternating step by step;
- a step's data path (decode, Dynamic-S2 tiling, tokenization of its samples) against a sample-cache hit.

    python bench/train_step.py [--steps 12] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_corpus, print_table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    from nvila_model.data.collate import FLASH_KWARGS, PackingCollator, model_inputs
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer
    from nvila_model.train.precision import resolve_attention

    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = make_corpus(Path(tmp), scale=0.3)
        config = build_config("tiny")
        processor = NVILAProcessor(load_tokenizer(tok_dir), config)
        records = read_manifest(data / "train.jsonl")
        random.Random(0).shuffle(records)  # a mix of every subset, as a shuffled epoch gives
        records = records[: args.steps * args.batch_size]
        dataset = LlavaDataset(records, data, processor, cache_mb=4096)
        start = time.perf_counter()
        samples = [dataset[i] for i in range(len(records))]
        decode_s = (time.perf_counter() - start) / args.steps
        start = time.perf_counter()
        assert all(dataset[i] is samples[i] for i in range(len(records)))
        hit_s = (time.perf_counter() - start) / args.steps

    collate = PackingCollator()
    batches = [model_inputs(collate(samples[i:i + args.batch_size])) for i in range(0, len(samples), args.batch_size)]
    torch.manual_seed(0)
    model = NVILAForConditionalGeneration(config).train()
    model.set_attn_implementation(resolve_attention("auto"))  # as a stage does
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def every_position(batch):  # the LLM's own loss: logits at every position
        embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch["media_layout"])
        boundaries = {k: batch[k] for k in FLASH_KWARGS}
        return model.language_model(inputs_embeds=embeds, attention_mask=model.packed_mask(None, boundaries),
                                     position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False,
                                     **boundaries).loss

    losses = {"supervised positions": lambda b: model(**b).loss, "every position": every_position}
    seconds = dict.fromkeys(losses, 0.0)
    for step, batch in enumerate([batches[0], *batches]):  # the first step warms up, not counted
        for name, loss_of in losses.items():
            began = time.perf_counter()
            loss_of(batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[name] += (time.perf_counter() - began) if step else 0.0
    step_s = {name: s / len(batches) for name, s in seconds.items()}
    rows = [{"part": f"step, loss on {name}", "seconds_per_step": round(s, 4)} for name, s in step_s.items()]
    rows += [{"part": "data path, decoded", "seconds_per_step": round(decode_s, 4)},
             {"part": "data path, cache hit", "seconds_per_step": round(hit_s, 6)}]
    print(f"train step bench: tiny preset, {args.batch_size} samples/step, one packed row each, "
          f"{len(batches)} steps, torch threads {torch.get_num_threads()}")
    print_table(rows, ["part", "seconds_per_step"])
    old = step_s["every position"] + decode_s
    new = step_s["supervised positions"] + hit_s
    ratios = {"loss_speedup": round(step_s["every position"] / step_s["supervised positions"], 3),
              "data_path_share_of_step": round(decode_s / old, 3), "step_with_data_speedup": round(old / new, 3)}
    print(ratios)
    write_results("train_step", {"preset": "tiny", "batch_size": args.batch_size, "attention": "sdpa_varlen",
                                 "steps": len(batches), "rows": rows, **ratios})


if __name__ == "__main__":
    main()
