"""Can a tiny NVILA trained from scratch learn to read the frontier's `text` task, with and without centring each
picture's visual tokens (`NVILAConfig.center_visual_tokens`)? Same text-only corpus, seed, batches and optimizer
settings (the `image_sft` learning rates and gradient clipping of params.yaml) for both; every module trains.

On flat-background pictures a fresh model's visual tokens are nearly one vector shared by every picture, and
training grows that shared part: the LLM's RMSNorm then leaves too little of what tells pictures apart to learn from.
The table gives that share (the norm of the mean token over all pictures against the mean token norm), the training
loss (chance: about ln(8)/2, the word and the end token) and the test exact match (teacher-forced greedy tokens of
the whole answer; chance 1/8).

    python bench/visual_centering.py [--train 1500] [--test 200] [--steps 300] [--memorise 0]

`--memorise N` trains on the first N records only (can the model fit them at all?). Prints a table and writes
bench/results/visual_centering.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402
from bench.single_task import subset_corpus, train  # noqa: E402


def shared_share(model, batch) -> float:
    """Norm of the mean visual token over every token of every picture, over the mean token norm."""
    import torch

    with torch.no_grad():
        tokens_ND = torch.cat(model.encode_media(batch["pixel_values"], batch["media_layout"]))
    return float(tokens_ND.mean(0).norm() / tokens_ND.norm(dim=1).mean())


def shares(model, batch) -> dict[str, float]:
    """The shared share of the tokens the LLM sees, and of what the projector itself outputs (before centring)."""
    centred = model.config.center_visual_tokens
    seen = shared_share(model, batch)
    model.config.center_visual_tokens = False
    try:
        return {"shared_share": seen, "projector_shared_share": shared_share(model, batch)}
    finally:
        model.config.center_visual_tokens = centred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--memorise", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = subset_corpus(Path(tmp), {"text": (args.train, args.test)}, args.seed)
        rows = [{"centred": center} | train({"center_visual_tokens": center}, data, tok_dir, args.steps, args.seed,
                                            memorise=args.memorise, probe=shares)
                for center in (False, True)]
    print_table(rows, ["centred", "shared_share_start", "projector_shared_share_end", "shared_share_end",
                       "train_loss_end", "test_text", "train_seconds"])
    name = "visual_centering" + (f"_memorise{args.memorise}" if args.memorise else "")
    write_results(name, {"settings": vars(args), "chance_exact_match": 0.125, "rows": rows})


if __name__ == "__main__":
    main()
