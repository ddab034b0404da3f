"""Can a tiny NVILA trained from scratch learn to read the frontier's `text` task, with and without centring its
visual tokens (`NVILAConfig.center_visual_tokens`: none, each picture's own mean, or the batch's mean with a running
average at inference)? Same text-only corpus, seed, batches and optimizer settings (the `image_sft` learning rates
and gradient clipping of params.yaml) for each; every module trains.

On flat-background pictures a fresh model's visual tokens are nearly one vector shared by every picture, and
training grows that shared part: the LLM's RMSNorm then leaves too little of what tells pictures apart to learn from.
The table gives that share as inference sees it (the norm of the mean token over all pictures against the mean token
norm), the same for the projector's own output, how the tokens spread between pictures' own means and around them
(`picture_shares`), the training loss (chance: about ln(8)/2, the word and the end token) and the test exact match
(teacher-forced greedy tokens of the whole answer; chance 1/8).

    python bench/visual_centering.py [--centring none,item,running] [--train 1500] [--test 200] [--steps 300]
                                     [--memorise 0] [--seed 0]

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
from nvila_model.config import CENTERING  # noqa: E402


def shared_share(items) -> float:
    """Norm of the mean visual token over every token of every picture (`items`: each picture's tokens), over the
    mean token norm."""
    import torch

    tokens_ND = torch.cat(items)
    return float(tokens_ND.mean(0).norm() / tokens_ND.norm(dim=1).mean())


def picture_shares(items) -> dict[str, float]:
    """How the tokens the LLM sees split around each picture's own mean token: the spread of those means between
    pictures (`picture_share`: RMS distance of a picture's mean from the mean of the pictures' means) and of the
    tokens within a picture (`within_share`: RMS distance of a token from its picture's mean), each over the mean
    token norm. `item` centring makes the first 0; `running` keeps it."""
    import torch

    means_ID = torch.stack([t.mean(0) for t in items])
    norm = torch.cat(items).norm(dim=1).mean()
    within = torch.cat([t - t.mean(0) for t in items]).pow(2).sum(1).mean().sqrt()
    between = (means_ID - means_ID.mean(0)).pow(2).sum(1).mean().sqrt()
    return {"picture_share": float(between / norm), "within_share": float(within / norm)}


def shares(model, batch) -> dict[str, float]:
    """The shared share of the tokens the LLM sees at inference (a running centring's average, not this batch's
    mean, and not updated), and of what the projector itself outputs (before centring); how the former split
    between and within pictures."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            seen, projected = (model.encode_media(batch["pixel_values"], batch["media_layout"], centre=centre)
                               for centre in (True, False))
        return ({"shared_share": shared_share(seen), "projector_shared_share": shared_share(projected)}
                | picture_shares(seen))
    finally:
        model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--centring", default=",".join(CENTERING),
                        help=f"the center_visual_tokens settings to compare, comma-separated ({', '.join(CENTERING)})")
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--memorise", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    modes = args.centring.split(",")
    if unknown := [m for m in modes if m not in CENTERING]:
        parser.error(f"--centring: {unknown} unknown; choose from {', '.join(CENTERING)}")
    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = subset_corpus(Path(tmp), {"text": (args.train, args.test)}, args.seed)
        rows = [{"centring": mode} | train({"center_visual_tokens": mode}, data, tok_dir, args.steps, args.seed,
                                           memorise=args.memorise, probe=shares)
                for mode in modes]
    print_table(rows, ["centring", "shared_share_start", "projector_shared_share_end", "shared_share_end",
                       "picture_share_end", "within_share_end", "train_loss_end", "test_text", "train_seconds"])
    name = "visual_centering" + (f"_memorise{args.memorise}" if args.memorise else "")
    write_results(name, {"settings": vars(args), "chance_exact_match": 0.125, "rows": rows})


if __name__ == "__main__":
    main()
