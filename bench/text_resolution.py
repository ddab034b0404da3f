"""Dynamic-S2 against fixed resize on the frontier's text task alone: does a tiny NVILA trained from scratch read the
words better when it sees them at high resolution?

The frontier's Dynamic-S2-on-text goal went +9.3, +5.0 and -10.7 points on three seeds: each run either learnt to
read or stayed at chance, whatever its resolution. This bench takes the mixture and the other stages away: a fresh
centring `tiny` NVILA with the frontier's uncompressed settings (`projector: none`; Dynamic-S2 on or off, as its
`s2_uncompressed` and `fixed_uncompressed` variants), trained with every module on the text records alone (clean,
the frontier's wide pictures of 14-16 px letters) at `image_sft`'s learning rates, then scored by test exact match
(chance 1/8 with the default vocabulary).

    python bench/text_resolution.py [--arms s2,fixed] [--train 1500] [--test 200] [--steps 300] [--seed 0]
                                    [--knob words=[ace,aec,cae,...]] [--knob min_side=300]

`--knob KEY=VALUE` sets a generator knob of the text subset on top of the frontier's (the vocabulary `words`: chance
is one over its size; the picture sizes `min_side`/`max_side`; the letter heights `glyph_px`); repeatable.

Prints a table and writes bench/results/text_resolution.json (other settings are named in the file's name).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402
from bench.single_task import (  # noqa: E402
    add_knob_option,
    arg_parser,
    choices,
    knobs_of,
    result_name,
    subset_corpus,
    subset_table,
    train,
)

ARMS = {  # name: model overrides, as the frontier's variants
    "s2": {"projector": "none", "dynamic_s2": True},
    "fixed": {"projector": "none", "dynamic_s2": False},
}
TASKS = ("text",)


def main() -> None:
    parser = arg_parser(__doc__, ARMS, TASKS, train=1500, test=200)
    add_knob_option(parser, "text")
    args = parser.parse_args()
    arms, _ = choices(parser, args, ARMS, TASKS)
    knobs = knobs_of(parser, args, "text")
    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = subset_corpus(Path(tmp), {"text": (args.train, args.test)}, args.seed, knobs)
        chance = subset_table(data)["text"]["chance"]
        rows = [{"arm": arm} | train(ARMS[arm], data, tok_dir, args.steps, args.seed) for arm in arms]
    print_table(rows, ["arm", "train_loss_end", "test_text", "train_seconds"])
    write_results(result_name("text_resolution", parser, args),
                  {"settings": vars(args), "chance_exact_match": chance, "rows": rows})


if __name__ == "__main__":
    main()
