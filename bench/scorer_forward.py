"""One DeltaLoss scorer's forward passes, same records, same run, three paths alternating over several rounds: the
model's full logits over padded micro-batches in corpus order (the first scorer); padded micro-batches sorted by
length with the LM head on the answer positions only (the second); and `CheckpointScorer.mean_logprobs`, each
micro-batch packed into one row without padding, attention within each record (sdpa_varlen), the LM head on the
answer positions. Encoding (decode, tiling, tokenizing) is done once beforehand and not timed.

    python bench/scorer_forward.py [--records 400] [--micro-batch-size 8] [--rounds 3] [--preset tiny]

Prints a table and writes bench/results/scorer_forward.json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_corpus, print_table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()

    import numpy as np
    import torch

    from nvila_model.data.manifest import read_manifest
    from nvila_model.deltaloss.checkpoint_scorer import CheckpointScorer
    from nvila_model.deltaloss.formula import mean_answer_logprob, supervised_mean_logprob
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = make_corpus(Path(tmp), scale=0.3)
        config = build_config(args.preset)
        torch.manual_seed(0)
        NVILAForConditionalGeneration(config).save_pretrained(str(Path(tmp) / "ckpt"))
        NVILAProcessor(load_tokenizer(tok_dir), config).save_pretrained(Path(tmp) / "ckpt")
        scorer = CheckpointScorer(Path(tmp) / "ckpt", data, micro_batch_size=args.micro_batch_size)
        records = read_manifest(data / "train.jsonl")
        random.Random(0).shuffle(records)  # images and videos mixed, as the corpus's subsets are
        records = records[: args.records]
        encoded = {r["id"]: scorer.encode(r) for r in records}
    scorer.encode = lambda record: encoded[record["id"]]  # both paths time the forward passes only

    @torch.inference_mode()
    def full_logits(records: list[dict]) -> np.ndarray:
        means = []
        for start in range(0, len(records), args.micro_batch_size):
            batch = scorer.processor.pad([encoded[r["id"]] for r in records[start:start + args.micro_batch_size]])
            labels_BL = batch.pop("labels")
            means += mean_answer_logprob(scorer.model(**batch).logits, labels_BL)[0].tolist()
        return np.array(means)

    @torch.inference_mode()
    def padded_sorted(records: list[dict]) -> np.ndarray:
        means = np.full(len(records), np.nan)
        order = sorted(range(len(records)), key=lambda i: encoded[records[i]["id"]]["input_ids"].shape[0])
        for start in range(0, len(order), args.micro_batch_size):
            chunk = order[start:start + args.micro_batch_size]
            batch = scorer.processor.pad([encoded[records[i]["id"]] for i in chunk])
            embeds_BLD = scorer.model.embed(batch["input_ids"], batch["pixel_values"], batch["media_layout"])
            logits_TV, targets_T, supervised_BL = scorer.model.supervised_logits(
                embeds_BLD, batch["attention_mask"], None, batch["labels"])
            means[chunk] = supervised_mean_logprob(logits_TV, targets_T, supervised_BL)[0].numpy()
        return means

    paths = {"full logits, padded, corpus order": full_logits,
             "answer positions, padded, length-sorted": padded_sorted,
             "answer positions, packed (the scorer)": lambda rs: scorer.mean_logprobs(rs)[0]}
    seconds = dict.fromkeys(paths, 0.0)
    means = {}
    for name, path in paths.items():  # warm-up, untimed
        means[name] = path(records[: args.micro_batch_size])
    for _ in range(args.rounds):
        for name, path in paths.items():
            began = time.perf_counter()
            means[name] = path(records)
            seconds[name] += time.perf_counter() - began
    first, padded, packed = (seconds[name] / args.rounds for name in paths)
    diff = max(float(np.max(np.abs(means[name] - means["answer positions, packed (the scorer)"]))) for name in paths)
    rows = [{"path": name, "records_per_s": round(len(records) * args.rounds / s, 1)} for name, s in seconds.items()]
    print(f"scorer forward bench: preset {args.preset}, {len(records)} records, micro-batches of "
          f"{args.micro_batch_size}, {args.rounds} rounds, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print_table(rows, ["path", "records_per_s"])
    print(f"packed vs padded length-sorted {padded / packed:.2f}x, vs the first scorer {first / packed:.2f}x, "
          f"max |mean log-prob difference| {diff:.1e}")
    write_results("scorer_forward", {"preset": args.preset, "records": len(records),
                                     "micro_batch_size": args.micro_batch_size, "rounds": args.rounds,
                                     "rows": rows, "speedup_vs_padded_sorted": round(padded / packed, 3),
                                     "speedup_vs_first": round(first / packed, 3), "max_abs_diff": diff,
                                     "load_average_1m": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
