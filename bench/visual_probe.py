"""What the visual tokens carry before any LLM reads them: for each question of the corpus's single-image subsets, a
linear probe (logistic regression) of the answer from each picture's visual tokens, mean- and max-pooled, per model
variant (the frontier's: a fixed resize against Dynamic-S2 + STC by default).

A probe well above chance at a fixed resize means a fixed resize leaves the answer readable, so a low-resolution
model can learn it too; a probe above chance where the trained model answers at chance means the information reaches
the LLM and the training does not teach it to read it. Pooling discards where a token is: a probe's accuracy is a
lower bound on what the tokens hold (the order of a word's letters is lost with it), and questions about positions
(spatial) can not be probed this way and are left out.

Records are generated in memory with the frontier's corpus settings (params.yaml `frontier.settings`; --standard:
the standard corpus), from the defect-free splits (val to fit, test to score). Models are freshly initialised
(seeded) unless `--checkpoint VARIANT=DIR` gives a trained one.

    python bench/visual_probe.py [--subsets text counting] [--fit 400] [--score 200] [--checkpoint nvila=DIR]

Prints a table and writes bench/results/visual_probe[_NAME].json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402
from flows.config import check_params, load_frontier_config  # noqa: E402
from flows.variants import VARIANTS, run_settings  # noqa: E402

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
PROBED = ("attributes", "counting", "text", "chart")  # single-image subsets whose answers do not depend on position
MODELS = [name for name, v in VARIANTS.items() if v.group != "peer"]  # the frontier's NVILA-model variants


def base_settings(standard: bool) -> dict[str, Any]:
    """The settings every frontier run starts from (`frontier.settings`); none for the standard corpus."""
    return {} if standard else load_frontier_config(PARAMS).settings


def corpus_params(standard: bool) -> dict[str, Any]:
    """params.yaml with the frontier's settings written in unless `standard`, checked as a frontier run's are."""
    return check_params(PARAMS, base_settings(standard))


def probe_records(generate: dict[str, Any], subset: str, split: str, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` defect-free records (val or test) of `subset`, one question each: the scene's own."""
    from nvila_model.data.config import GenerateConfig, subset_configs
    from nvila_model.data.generate import SUBSETS, build_split

    sc = subset_configs(GenerateConfig(**generate))[subset]
    rng = np.random.default_rng([seed, list(SUBSETS).index(subset), ("val", "test").index(split)])
    return build_split(SUBSETS[subset], sc, split, count, rng)


def probe_accuracy(fit_X: np.ndarray, fit_y: list[str], score_X: np.ndarray, score_y: list[str]) -> float:
    """Test accuracy of a standardised logistic regression fitted on (fit_X, fit_y)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(fit_X, fit_y)
    return float(probe.score(score_X, score_y))


def pooled_tokens(model: Any, processor: Any, scenes: list[dict[str, Any]], subset: str) -> np.ndarray:
    """[n, 2D]: the mean and the max over each rendered scene's visual tokens."""
    import torch

    from nvila_model.data.generate import SUBSETS

    out = []
    with torch.inference_mode():
        for scene in scenes:
            tiles, row = processor.preprocess_image(SUBSETS[subset].render(scene), single_image=True)
            tokens_ND = model.encode_media(tiles, torch.tensor([row]))[0]
            out.append(torch.cat([tokens_ND.mean(0), tokens_ND.amax(0)]).numpy())
    return np.stack(out)


def variant_model(name: str, standard: bool, tokenizer: Any, checkpoint: str | None, seed: int):
    """(model, processor) of a frontier variant: built, seeded, from the params its frontier run reads, or loaded."""
    import torch

    from nvila_model.checkpoint import load_checkpoint
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor

    if checkpoint:
        return load_checkpoint(checkpoint, device="cpu")
    model = check_params(PARAMS, run_settings(VARIANTS[name], base_settings(standard), None))["model"]
    config = build_config(model["preset"], **model["overrides"])
    torch.manual_seed(seed)
    return NVILAForConditionalGeneration(config).eval(), NVILAProcessor(tokenizer, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsets", nargs="+", default=list(PROBED), choices=PROBED)
    parser.add_argument("--variants", nargs="+", default=["fixed_uncompressed", "nvila"], choices=MODELS)
    parser.add_argument("--fit", type=int, default=400, help="records per subset the probe is fitted on (val)")
    parser.add_argument("--score", type=int, default=200, help="records per subset the probe is scored on (test)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="VARIANT=DIR")
    parser.add_argument("--standard", action="store_true", help="the standard corpus, not the frontier's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="", help="suffix of the results file")
    args = parser.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    unknown = sorted(set(checkpoints) - set(args.variants))
    if unknown:
        parser.error(f"--checkpoint names variant(s) {unknown} not in --variants {args.variants}")

    from nvila_model.data.config import GenerateConfig, subset_configs
    from nvila_model.data.generate import SUBSETS
    from nvila_model.presets import build_config
    from nvila_model.tokenizer import load_tokenizer, train_tokenizer

    params = corpus_params(args.standard)
    data = {s: {split: probe_records(params["generate"], s, split, n, args.seed)
                for split, n in (("val", args.fit), ("test", args.score))} for s in args.subsets}
    with tempfile.TemporaryDirectory() as tmp:  # the processor needs a tokenizer; the probe reads no text
        texts = [t["value"] for s in data.values() for r in s["val"] for t in r["conversations"]]
        vocab = build_config(params["model"]["preset"]).text_config.vocab_size
        train_tokenizer(texts, vocab).save_pretrained(tmp)
        tokenizer = load_tokenizer(tmp)
    rows = []
    configs = subset_configs(GenerateConfig(**params["generate"]))
    for subset, splits in data.items():
        for qtype, answers in SUBSETS[subset].answer_sets(configs[subset]).items():
            fit = [r for r in splits["val"] if r["qtypes"][0] == qtype]
            score = [r for r in splits["test"] if r["qtypes"][0] == qtype]
            rows.append({"subset": subset, "question": qtype, "chance": 1 / len(answers), "fit": len(fit),
                         "score": len(score), "_records": (fit, score)})
    for variant in args.variants:
        model, processor = variant_model(variant, args.standard, tokenizer, checkpoints.get(variant), args.seed)
        for row in rows:
            fit, score = row["_records"]
            features = [pooled_tokens(model, processor, [r["scene"] for r in recs], row["subset"])
                        for recs in (fit, score)]
            row[variant] = probe_accuracy(features[0], [r["conversations"][1]["value"] for r in fit],
                                          features[1], [r["conversations"][1]["value"] for r in score])
    for row in rows:
        del row["_records"]
    print_table(rows, ["subset", "question", "chance", "fit", "score", *args.variants])
    write_results("visual_probe" + (f"_{args.name}" if args.name else ""),
                  {"corpus": "standard" if args.standard else "frontier", "checkpoints": checkpoints,
                   "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()
