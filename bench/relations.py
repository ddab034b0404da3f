"""The two-object relation tasks alone: can a tiny NVILA trained from scratch tell whether one named shape is left of
(or above) another (`spatial`), or appeared before another (`order`), and does a deeper LLM help?

Every frontier variant answers `spatial` and `order` at chance. Unlike the subsets it learns (one shape; or several
of one kind, counted; or one shape in each of two pictures), both need the question to pick out the shapes: the
answer depends on which of the two named colours is where, or when. Each arm is the `tiny` preset with its NVILA
settings, trained with every module on the task alone (clean records, the frontier's scene settings) at the
recipe's learning rates (`image_sft` for pictures, `video_sft` for videos, 32 frames averaged by 4 as there), then
scored by test exact match (chance 1/2). `--memorise N` trains on the first N records only: a model that can not
fit them does not use the pictures at all.

    python bench/relations.py [--tasks spatial,order] [--arms llm2,llm4] [--train 1500] [--test 200] [--steps 300]

Prints a table and writes bench/results/relations.json; other settings are named in the file's name
(`--arms llm4 --steps 900`: relations_armsllm4_steps900.json).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402
from bench.single_task import arg_parser, choices, result_name, subset_corpus, train  # noqa: E402

ARMS = {  # name: model overrides on top of the preset
    "llm2": {},                              # the tiny preset: 2 LLM layers
    "llm4": {"text.num_hidden_layers": 4},   # twice the LLM depth
}
TASKS = {  # name: (stage recipe, model overrides)
    "spatial": ("image_sft", {}),
    "order": ("video_sft", {"num_video_frames": 32, "video_pool_size": 4}),
}


def main() -> None:
    parser = arg_parser(__doc__, ARMS, TASKS, train=1500, test=200)
    parser.add_argument("--memorise", type=int, default=0, help="train on this many records only")
    args = parser.parse_args()
    arms, tasks = choices(parser, args, ARMS, TASKS)
    rows = []
    for task in tasks:  # one task at a time: each gets its own recipe
        stage, task_overrides = TASKS[task]
        with tempfile.TemporaryDirectory() as tmp:
            data, tok_dir = subset_corpus(Path(tmp), {task: (args.train, args.test)}, args.seed)
            for arm in arms:
                result = train(ARMS[arm] | task_overrides, data, tok_dir, args.steps, args.seed, stage=stage,
                               memorise=args.memorise)
                rows.append({"task": task, "arm": arm, "train_loss_end": result["train_loss_end"],
                             "test_exact_match": result[f"test_{task}"], "train_seconds": result["train_seconds"]})
    print_table(rows, ["task", "arm", "train_loss_end", "test_exact_match", "train_seconds"])
    write_results(result_name("relations", parser, args),
                  {"settings": vars(args), "chance_exact_match": 0.5, "rows": rows})


if __name__ == "__main__":
    main()
