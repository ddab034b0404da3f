"""How legible is the frontier's text task in the pixels each resolution gives the vision tower? A small CNN reader,
trained from scratch on the pixels alone, names the word from (a) the fixed resize of the whole picture to one tile
and (b) Dynamic-S2's largest-scale grid, exactly as the processor prepares them.

The frontier's `text` settings (params.yaml) leave letters under 2 pixels wide after the fixed resize
(tests/data/test_frontier_corpus.py). This bench asks whether that makes the word unreadable there, which the
Dynamic-S2-on-text goal assumes. The reader is a measuring instrument, not a model of the pipeline: it is a much
stronger pixel reader than a 4-pixel-patch ViT, so a word it reads at a resolution is not lost in that resize (and
one it can not read is unlikely to be read by the pipeline's model).

    python bench/text_legibility.py [--arms fixed,s2] [--train 3000] [--test 600] [--steps 800] [--seed 0]
                                    [--knob words=[ace,aec,cae,...]] [--knob min_side=300] [--grain 0.4]

`--knob KEY=VALUE` sets a generator knob of the text subset on top of the frontier's (the vocabulary `words`, the
picture sizes `min_side`/`max_side`, the letter heights `glyph_px`; repeatable). `--grain` adds pixel noise of that
standard deviation (a share of full scale, one value per pixel for all three channels) to each picture before the
processor.
Prints a table and writes bench/results/text_legibility.json (other settings are named in the file's name).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402
from bench.single_task import (  # noqa: E402
    add_knob_option,
    arg_parser,
    choices,
    knobs_of,
    params,
    result_name,
    subset_corpus,
    subset_table,
)

ARMS = {"fixed": False, "s2": True}  # name: Dynamic-S2 on
TASKS = ("text",)
BATCH = 64


def pixels(processor, image, dynamic_s2: bool):
    """What the vision tower sees of one picture, as one [3, H, W] map: the single tile of the fixed resize, or
    Dynamic-S2's largest-scale grid stitched back together."""
    from nvila_model.dynamic_s2 import stitch

    tiles_NCtt, layout = processor.preprocess_image(image, single_image=True)
    if not dynamic_s2:
        return tiles_NCtt[0]
    _, rows, cols, _ = layout
    grid_NttC = tiles_NCtt[-rows * cols:].permute(0, 2, 3, 1)
    return stitch(grid_NttC, rows, cols).permute(2, 0, 1)


def with_grain(image, grain: float, rng: np.random.Generator):
    from PIL import Image

    if not grain:
        return image
    x_HW3 = np.asarray(image, dtype=np.float32)
    x_HW3 = x_HW3 + rng.normal(0.0, grain * 255.0, size=(*x_HW3.shape[:2], 1))
    return Image.fromarray(np.clip(x_HW3, 0, 255).astype(np.uint8))


def batch_of(maps: list) -> object:
    """Maps of one arm -> [N, 3, H, W], each minus its median colour (the background), zero-padded to the largest."""
    import torch

    height, width = max(m.shape[1] for m in maps), max(m.shape[2] for m in maps)
    out = torch.zeros(len(maps), 3, height, width)
    for i, m_CHW in enumerate(maps):
        out[i, :, :m_CHW.shape[1], :m_CHW.shape[2]] = m_CHW - m_CHW.flatten(1).median(dim=1).values[:, None, None]
    return out


def reader(classes: int, stride: int):
    """Three 3x3 convolutions (stride 2 on the larger Dynamic-S2 maps, to keep the cost of the two arms alike), max
    pooling to a 2x4 map, two linear layers. Written here: a measuring instrument, no library ships one."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, stride=stride), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1, stride=stride), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d((2, 4)), nn.Flatten(),
                         nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, classes))


def read_accuracy(train_X, train_y, test_X, test_y, classes: int, steps: int, seed: int) -> dict[str, float]:
    """Train the reader on (train_X, train_y) with AdamW; its accuracy on the first 600 training maps and on test."""
    import torch

    torch.manual_seed(seed)
    net = reader(classes, stride=2 if train_X.shape[-1] > 32 else 1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(train_X), (BATCH,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(train_X[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        hits = [(net(x).argmax(1) == y).float().mean().item() for x, y in ((train_X[:600], train_y[:600]),
                                                                            (test_X, test_y))]
    return {"reader_train_acc": round(hits[0], 4), "reader_test_acc": round(hits[1], 4),
            "final_loss": round(loss.item(), 4), "reader_seconds": round(seconds, 1)}


def main() -> None:
    parser = arg_parser(__doc__, ARMS, TASKS, train=3000, test=600)
    parser.set_defaults(steps=800)
    add_knob_option(parser, "text")
    parser.add_argument("--grain", type=float, default=0.0, help="pixel noise s.d., a share of full scale")
    args = parser.parse_args()
    arms, _ = choices(parser, args, ARMS, TASKS)
    knobs = knobs_of(parser, args, "text")

    import torch
    from PIL import Image

    from nvila_model.data.manifest import read_manifest
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer

    model = params()["model"]
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = subset_corpus(Path(tmp), {"text": (args.train, args.test)}, args.seed, knobs)
        vocabulary = subset_table(data)["text"]["answers"]
        splits = {}
        for split in ("train", "test"):
            records = read_manifest(data / f"{split}.jsonl")
            images = [with_grain(Image.open(data / r["image"]).convert("RGB"), args.grain, rng) for r in records]
            labels = torch.tensor([vocabulary.index(r["conversations"][-1]["value"]) for r in records])
            splits[split] = (images, labels)
        tokenizer = load_tokenizer(tok_dir)
    rows = []
    for arm in arms:
        config = build_config(model["preset"], **{**model["overrides"], "dynamic_s2": ARMS[arm]})
        processor = NVILAProcessor(tokenizer, config)
        (train_img, train_y), (test_img, test_y) = splits["train"], splits["test"]
        train_X = batch_of([pixels(processor, im, ARMS[arm]) for im in train_img])
        test_X = batch_of([pixels(processor, im, ARMS[arm]) for im in test_img])
        rows.append({"arm": arm, "pixels": f"{train_X.shape[-1]}x{train_X.shape[-2]}", "words": len(vocabulary),
                     "chance": round(1 / len(vocabulary), 4)}
                    | read_accuracy(train_X, train_y, test_X, test_y, len(vocabulary), args.steps, args.seed))
    print_table(rows, ["arm", "pixels", "words", "chance", "reader_train_acc", "reader_test_acc", "reader_seconds"])
    write_results(result_name("text_legibility", parser, args),
                  {"settings": vars(args), "vocabulary": vocabulary, "rows": rows})


if __name__ == "__main__":
    main()
