"""What `encode_media` does between the vision tower and the projector on a training batch (the Dynamic-S2 merge of
each image, the per-scale copy of each video frame), forward + backward, two ways alternating batch by batch in one
run: each item's tiles sliced from the tower's output (`encode_media` before) against the output split once
(`encode_media` now). Also checks that both give the same bits.

A slice's backward writes a zero gradient the size of the whole output and adds into it, once per item; a split's
backward concatenates the pieces once.

    python bench/media_split.py [--preset tiny] [--batches 12] [--batch-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from itertools import accumulate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_corpus, print_table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from nvila_model.data.collate import PackingCollator
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import scale_maps, tiles_of
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data, tok = make_corpus(Path(tmp), scale=0.3)
        config = build_config(args.preset)
        processor = NVILAProcessor(load_tokenizer(tok), config)
        records = read_manifest(data / "train.jsonl")
        random.Random(0).shuffle(records)  # a mix of every subset, as a shuffled epoch gives
        dataset = LlavaDataset(records, data, processor)
        collate = PackingCollator()
        layouts = [collate([dataset[(i * args.batch_size + j) % len(dataset)] for j in range(args.batch_size)])
                   ["media_layout"].tolist() for i in range(args.batches)]
    side, width = config.patches_per_side, config.vision_config.hidden_size
    torch.manual_seed(0)
    batches = []
    for layout in layouts:  # each batch's media and their tiles' features in one tensor, as the tower gives them
        counts = [tiles_of(row, config) for row in layout]
        batches.append((layout, counts, torch.randn(sum(counts), side, side, width)))

    def sliced(layout, counts, feats):  # encode_media before: a slice of the features per item
        starts = list(accumulate(counts, initial=0))[:-1]
        return [scale_maps(row, feats[s:s + n], config) for row, s, n in zip(layout, starts, counts, strict=True)]

    def split(layout, counts, feats):  # encode_media now
        return [scale_maps(row, t, config) for row, t in zip(layout, feats.split(counts), strict=True)]

    modes = {"a slice per item": sliced, "one split": split}

    def step(fn, batch):
        feats = batch[2].requires_grad_(True)
        feats.grad = None
        start = time.perf_counter()
        torch.cat(fn(*batch)).square().sum().backward()
        return time.perf_counter() - start

    same = all(torch.equal(a, b) for batch in batches
               for a, b in zip(*(fn(*batch) for fn in modes.values()), strict=True))
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for batch in batches[:1] * 2 + batches:  # the first batch twice more: warm-up
        for mode, fn in modes.items():
            times[mode].append(step(fn, batch))
    items = statistics.mean(len(batch[0]) for batch in batches)
    tiles = statistics.mean(sum(batch[1]) for batch in batches)
    base = statistics.median(times["a slice per item"][2:])
    rows = [{"mode": mode, "ms_per_batch": statistics.median(t[2:]) * 1e3,
             "speedup": base / statistics.median(t[2:])} for mode, t in times.items()]
    print(f"{args.preset}: {items:.1f} media items, {tiles:.0f} tiles per batch of {args.batch_size}; "
          f"same bits: {same}")
    print_table(rows, ["mode", "ms_per_batch", "speedup"])
    if not same:
        raise SystemExit("the split tiles give other features than the sliced tiles")
    write_results(f"media_split_{args.preset}", {"preset": args.preset, "batch_size": args.batch_size,
                                                 "threads": args.threads, "media_items_per_batch": items,
                                                 "tiles_per_batch": tiles, "same_bits": same, "rows": rows})


if __name__ == "__main__":
    main()
