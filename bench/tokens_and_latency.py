"""Visual tokens per image and prefill latency: projector none / 2x2 STC / 3x3 STC, with and without Dynamic-S2.

All six variants are built from the same preset in one process and timed in interleaved rounds (noisy machines).

    python bench/tokens_and_latency.py [--preset small] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import print_table, write_results  # noqa: E402
from nvila_model.modeling import NVILAForConditionalGeneration  # noqa: E402
from nvila_model.presets import build_config  # noqa: E402
from nvila_model.processor import NVILAProcessor  # noqa: E402
from nvila_model.tokenizer import train_tokenizer  # noqa: E402

PROJECTORS = ["none", "mlp_downsample", "mlp_downsample_3x3_fix"]
SIZES = [(160, 64), (64, 160), (120, 120), (200, 120), (48, 48)]   # landscape, portrait, square, wide, tiny


def build(preset: str, projector: str, s2: bool, tokenizer) -> tuple[NVILAForConditionalGeneration, NVILAProcessor]:
    torch.manual_seed(0)
    config = build_config(preset, projector=projector, dynamic_s2=s2)
    return NVILAForConditionalGeneration(config).eval(), NVILAProcessor(tokenizer, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tokenizer = train_tokenizer(["What is written in the picture?", "cat", "dog"], 400)
    images = [Image.new("RGB", size, (40 * i, 90, 200)) for i, size in enumerate(SIZES)]
    variants = {(p, s2): build(args.preset, p, s2, tokenizer) for p in PROJECTORS for s2 in (False, True)}
    batches = {key: [proc.pad([proc.encode_prompt("<image>\nWhat is written in the picture?", images=[img])])
                     for img in images] for key, (_, proc) in variants.items()}
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in variants}
    with torch.no_grad():
        for round_ in range(args.rounds + 1):
            for key, (model, _) in variants.items():
                t0 = time.perf_counter()
                for batch in batches[key]:
                    model(**batch)
                if round_:  # round 0 warms up
                    times[key].append((time.perf_counter() - t0) / len(images))
    rows = []
    for (projector, s2), (_, proc) in variants.items():
        tokens = [proc.num_image_tokens(*size) for size in SIZES]
        rows.append({"projector": projector, "dynamic_s2": s2, "tokens_per_image": statistics.mean(tokens),
                     "prefill_ms": 1000 * statistics.median(times[(projector, s2)]),
                     "tokens_by_size": dict(zip([f"{w}x{h}" for w, h in SIZES], tokens, strict=True))})
    ref = next(r for r in rows if r["projector"] == "none" and not r["dynamic_s2"])
    ref_s2 = next(r for r in rows if r["projector"] == "none" and r["dynamic_s2"])
    for row in rows:
        base = ref_s2 if row["dynamic_s2"] else ref
        row["token_ratio_vs_none"] = row["tokens_per_image"] / base["tokens_per_image"]
        row["latency_ratio_vs_none"] = row["prefill_ms"] / base["prefill_ms"]
    print_table(rows, ["projector", "dynamic_s2", "tokens_per_image", "token_ratio_vs_none", "prefill_ms",
                       "latency_ratio_vs_none"])
    write_results("tokens_and_latency", {"preset": args.preset, "rounds": args.rounds, "sizes": SIZES, "rows": rows})


if __name__ == "__main__":
    main()
