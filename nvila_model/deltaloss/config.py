"""Config classes of the DeltaLoss stages: `score` (with its Ray pool and bootstrap) and `prune` in params.yaml."""

from __future__ import annotations

import os
from dataclasses import field
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from nvila_model.params import DeviceSetting, config

PRUNE_METHODS = ("deltaloss", "random")
TRAIN_MANIFEST = "train.jsonl"  # the split of a corpus folder that is scored and pruned; a prune output's file
SCORES_FILE = "scores.parquet"  # in a score output
PruneMethod = Literal["deltaloss", "random"]
# Ray puts its AF_UNIX sockets (at most 107 characters) at <temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/
# plasma_store, 64 characters after the temp dir with a 7-digit pid.
MAX_TEMP_DIR_CHARS = 107 - len("/session_2026-12-01_06-42-05_702694_4194304/sockets/plasma_store")


def _ray_temp_dir(path: str | None) -> str | None:
    if path is not None and not (os.path.isabs(path) and len(path) <= MAX_TEMP_DIR_CHARS):
        raise ValueError(f"must be an absolute path of at most {MAX_TEMP_DIR_CHARS} characters (Ray's socket paths "
                         f"below it must fit 107), got {path!r}")
    return path


@config
class RayConfig:
    """The Ray actor pool that scores batches; `address` (or RAY_ADDRESS) joins a running cluster."""

    address: str | None = None  # None: RAY_ADDRESS if set, else start a local instance
    num_actors: int = Field(default=2, ge=0)  # 0 scores in this process without Ray
    cpus_per_actor: float = Field(default=1.0, gt=0)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    num_cpus: int | None = Field(default=None, ge=1)  # CPUs of a locally started instance (None: all)
    # Where a local instance keeps its session folder (kept after the run); None: a private folder in the system temp
    # dir, removed when scoring ends.
    temp_dir: Annotated[str | None, AfterValidator(_ray_temp_dir)] = None
    # Ray restarts a dead actor in place this many times (reloading both scorers) and re-runs its in-flight batch;
    # -1: without limit. Then the driver replaces dead actors and re-scores missing batches, `max_rounds` rounds.
    max_restarts: int = Field(default=2, ge=-1)
    max_rounds: int = Field(default=3, ge=1)


@config
class BootstrapConfig:
    """Proxy scorers trained briefly when no checkpoints are configured (first, self-contained run)."""

    small_preset: str = "tiny"
    large_preset: str = "small"
    share: float = Field(default=0.3, gt=0, le=1)  # random share of the manifest used to train both proxies
    small_steps: int = Field(default=60, ge=1)
    large_steps: int = Field(default=200, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    # 1: both proxies train on a `share` of all records and score every record (including those they saw).
    # k >= 2, cross-fitting: the records are cut into k seeded folds and each fold is scored by proxies trained on
    # (a `share` of) the other folds only, so no record is scored by a model that trained on it (k pairs trained).
    folds: int = Field(default=1, ge=1)
    # Alignment steps before the large proxy's `large_steps`, the LLM frozen, on the image records: the first half
    # trains the projector alone, the second the vision tower with it (the recipe's stages 1-2, scaled down).
    # Trained from scratch on all modules at once, a proxy learns each question's answer prior before it learns to
    # look, and then finds wrong labels no better than chance (docs/FRONTIER.md: The scorers).
    large_align_steps: int = Field(default=0, ge=0)
    vision_lr_ratio: float = Field(default=1.0, gt=0, le=1)  # vision tower LR = lr * ratio, in every proxy step


@config
class ScoreConfig:
    """`nvila score`: DeltaLoss score of every training record with a small and a large scorer."""

    small_checkpoint: str | None = None  # checkpoint dirs; both None -> bootstrap proxies
    large_checkpoint: str | None = None  # production: the previous run's trained model
    batch_size: int = Field(default=50, ge=1)  # records per actor call
    micro_batch_size: int = Field(default=8, ge=1)  # records per forward pass inside an actor
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: DeviceSetting = "auto"  # auto (cuda when available) | cpu | cuda[:N]
    max_samples: int | None = Field(default=None, ge=1)  # score only the first N records (debug runs)
    seed: int = Field(default=0, ge=0)  # of the bootstrap proxies
    ray: RayConfig = field(default_factory=RayConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self) -> None:
        if (self.small_checkpoint is None) != (self.large_checkpoint is None):
            raise ValueError("give both small_checkpoint and large_checkpoint, or neither (bootstrap proxies)")


@config
class PruneConfig:
    """`nvila prune`: per-subset top share by DeltaLoss score, or a seeded random share of the same size."""

    keep_ratio: float = Field(default=0.5, gt=0, le=1)  # 1 keeps everything (the all-data reference)
    method: PruneMethod = "deltaloss"
    protected_subsets: list[str] = field(default_factory=list)  # kept whole at every ratio
    # Rank within each (subset, final answer) and keep the share of each: the subset's answer distribution survives
    # pruning. Off is the paper's per-subset ranking; see prune.select for why a short-answer corpus may want it.
    balance_answers: bool = False
    seed: int = Field(default=0, ge=0)  # of the random method
