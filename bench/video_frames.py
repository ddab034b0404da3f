"""Dense frames with temporal averaging against sparse frames at equal video tokens, on the frontier's video tasks
alone: can a tiny NVILA trained from scratch count 1-frame flashes, order 1-frame appearances and tell a direction
of motion, when it sees 32 frames averaged in groups of 4, or 8 frames one by one?

Both arms put 8 frame groups of tokens into the LLM. The flashes and appearances of the frontier's corpus last one
frame in a slot of 4 (params.yaml `frontier.settings`), so 8 evenly spaced frames miss most of them, and 32 frames
see every one, at a quarter of its strength after averaging. The optional `dense_unpooled` arm (32 frames, no
averaging: 4x the video tokens) shows what averaging costs. Same corpus, seed, batches and the `video_sft`
learning rates for every arm; every module trains. Test exact match per task (teacher-forced greedy tokens of the
whole answer; chance: flashes 1/3, order 1/2, motion 1/4).

    python bench/video_frames.py [--train 500] [--test 100] [--steps 300] [--arms dense,sparse]

Prints a table and writes bench/results/video_frames.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402
from bench.single_task import arg_parser, choices, subset_corpus, train  # noqa: E402

ARMS = {  # name: (frames, frames averaged per group)
    "dense": (32, 4),
    "sparse": (8, 1),
    "dense_unpooled": (32, 1),
}
TASKS = ("flashes", "order", "motion")
CHANCE = {"flashes": 1 / 3, "order": 1 / 2, "motion": 1 / 4}


def main() -> None:
    parser = arg_parser(__doc__, ARMS, TASKS, train=500, test=100, default_arms="dense,sparse")
    args = parser.parse_args()
    arms, tasks = choices(parser, args, ARMS, TASKS)
    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = subset_corpus(Path(tmp), {task: (args.train, args.test) for task in tasks}, args.seed)
        rows = []
        for arm in arms:
            frames, pool = ARMS[arm]
            rows.append({"arm": arm, "frames": frames, "pool": pool, "token_groups": frames // pool}
                        | train({"num_video_frames": frames, "video_pool_size": pool}, data, tok_dir, args.steps,
                                args.seed, stage="video_sft"))
    print_table(rows, ["arm", "frames", "pool", "token_groups", "train_loss_end", *(f"test_{t}" for t in tasks),
                       "test_mean", "train_seconds"])
    write_results("video_frames", {"settings": vars(args), "chance": {t: CHANCE[t] for t in tasks}, "rows": rows})


if __name__ == "__main__":
    main()
