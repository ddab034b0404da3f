"""Config dataclasses of the DeltaLoss stages: `score` (with its Ray pool and bootstrap) and `prune` in params.yaml."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from nvila_model.device import check_device_setting

PRUNE_METHODS = ("deltaloss", "random")


@dataclasses.dataclass
class RayConfig:
    """The Ray actor pool that scores batches; `address` (or RAY_ADDRESS) joins a running cluster."""

    address: str | None = None  # None: RAY_ADDRESS if set, else start a local instance
    num_actors: int = 2  # 0 scores in this process without Ray
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    num_cpus: int | None = None  # CPUs of a locally started instance (None: all)
    temp_dir: str | None = None  # Ray's session dir for a local instance (absolute; None: Ray's default)
    max_restarts: int = 2  # Ray restarts a dead actor in place this many times (reloading both scorers) and
    # re-runs its in-flight batch; -1: without limit
    max_rounds: int = 3  # then the driver replaces dead actors and re-scores missing batches, this many rounds

    def validate(self) -> None:
        """Raise `ValueError` on impossible settings, before anything starts."""
        if self.num_actors < 0:
            raise ValueError(f"score.ray.num_actors must be >= 0, got {self.num_actors}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("score.ray.cpus_per_actor must be > 0 and gpus_per_actor >= 0")
        if self.max_rounds < 1 or self.max_restarts < -1:
            raise ValueError("score.ray.max_rounds must be >= 1 and max_restarts >= -1")


@dataclasses.dataclass
class BootstrapConfig:
    """Proxy scorers trained briefly when no checkpoints are configured (first, self-contained run)."""

    small_preset: str = "tiny"
    large_preset: str = "small"
    share: float = 0.3  # random share of the manifest used to train both proxies
    small_steps: int = 60
    large_steps: int = 200
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    out_dir: str = "runs/scorers"

    def validate(self) -> None:
        """Raise `ValueError` on impossible settings."""
        if not 0 < self.share <= 1:
            raise ValueError(f"score.bootstrap.share must be in (0, 1], got {self.share}")
        if min(self.small_steps, self.large_steps, self.batch_size) < 1 or self.lr <= 0:
            raise ValueError("score.bootstrap steps, batch_size and lr must be positive")


@dataclasses.dataclass
class ScoreConfig:
    """`nvila score`: DeltaLoss score of every training record with a small and a large scorer."""

    manifest: str = "data/validated/synth/train.jsonl"
    media_root: str | None = None  # None: the manifest's folder
    tokenizer_dir: str = "runs/tokenizer"  # used by the bootstrap proxies
    out_dir: str = "data/scores"
    small_checkpoint: str | None = None  # checkpoint dirs; both None -> bootstrap proxies
    large_checkpoint: str | None = None  # production: the previous run's trained model
    batch_size: int = 50  # records per actor call
    micro_batch_size: int = 8  # records per forward pass inside an actor
    dtype: str = "float32"  # float32 | bfloat16
    device: str = "auto"  # auto (cuda when available) | cpu | cuda[:N]
    max_samples: int | None = None  # score only the first N records (debug runs)
    ray: RayConfig = field(default_factory=RayConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def validate(self) -> None:
        """Raise `ValueError` on impossible settings, before loading models or starting Ray."""
        if (self.small_checkpoint is None) != (self.large_checkpoint is None):
            raise ValueError("score: give both small_checkpoint and large_checkpoint, or neither (bootstrap)")
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("score.batch_size and score.micro_batch_size must be >= 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"score.dtype must be float32 or bfloat16, got {self.dtype!r}")
        check_device_setting(self.device, "score.device")
        self.ray.validate()
        self.bootstrap.validate()


@dataclasses.dataclass
class PruneConfig:
    """`nvila prune`: per-subset top share by DeltaLoss score, and the seeded random baseline."""

    scores: str = "data/scores/scores.parquet"
    manifest: str = "data/validated/synth/train.jsonl"
    media_root: str | None = None  # None: the manifest's folder
    out_dir: str = "data/pruned"
    methods: list[str] = field(default_factory=lambda: list(PRUNE_METHODS))
    keep_ratios: list[float] = field(default_factory=lambda: [0.9, 0.7, 0.5])
    keep_ratio: float = 0.5  # the point training reads: data/pruned/<method>-<keep_ratio>/ (always written)
    method: str = "deltaloss"
    protected_subsets: list[str] = field(default_factory=list)  # kept whole at every ratio
    seed: int = 0

    def validate(self) -> None:
        """Raise `ValueError` on impossible settings."""
        for method in [*self.methods, self.method]:
            if method not in PRUNE_METHODS:
                raise ValueError(f"prune: unknown method {method!r}; choose from {list(PRUNE_METHODS)}")
        for ratio in [*self.keep_ratios, self.keep_ratio]:
            if not 0 < float(ratio) <= 1:
                raise ValueError(f"prune: keep ratio {ratio} must be in (0, 1]")

    def all_ratios(self) -> list[float]:
        """The ratios written: `keep_ratios` plus the selected `keep_ratio`, sorted high to low."""
        return sorted({float(r) for r in [*self.keep_ratios, self.keep_ratio]}, reverse=True)
