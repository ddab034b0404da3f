"""Bootstrap scorers: when no checkpoints are configured, train a small and a large proxy briefly on a random share.

This makes the first run of the pipeline self-contained. A production run should instead score with the previous
run's trained model as the large scorer (`score.large_checkpoint`) and a smaller preset as the small one: a proxy
trained for a few hundred steps only separates what is easy to learn from what contradicts the rest of the data.

`train_proxy` is the single training call; it goes through the same Trainer path as the five stages
(`nvila_model.train.stage.fit`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from nvila_model.deltaloss.config import BootstrapConfig

log = logging.getLogger(__name__)


def proxy_share(records: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """A seeded random `share` of the records (at least one), in their original order."""
    rng = np.random.default_rng(seed)
    count = max(1, round(share * len(records)))
    chosen = np.sort(rng.choice(len(records), size=count, replace=False))
    return [records[int(i)] for i in chosen]


def train_proxy(preset: str, tokenizer_dir: str | Path, records: list[dict[str, Any]], media_root: str | Path,
                steps: int, batch_size: int, lr: float, seed: int, out: str | Path,
                pack_tokens: int | None = None) -> Path:
    """Train preset `preset` from scratch for `steps` steps on `records` (all modules, one LR) with the project
    trainer, packing rows of at most `pack_tokens` (None: the trainer's default); save a checkpoint dir to `out`."""
    from nvila_model.data.registry import absolute_media
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer
    from nvila_model.train.config import MODULES, StageConfig
    from nvila_model.train.stage import fingerprint, fit, work_dir

    def make_model():
        tokenizer = load_tokenizer(tokenizer_dir)
        config = build_config(preset)
        if len(tokenizer) > config.text_config.vocab_size:
            config = build_config(preset, **{"text.vocab_size": len(tokenizer)})
        return NVILAForConditionalGeneration(config), NVILAProcessor(tokenizer, config)

    cfg = StageConfig(train_modules=list(MODULES), lr=dict.fromkeys(MODULES, lr), datasets=["bootstrap-share"],
                      batch_size=batch_size, max_steps=steps, pack_tokens=pack_tokens, max_grad_norm=5.0,
                      save_steps=steps, logging_steps=steps, seed=seed, resume=False)
    absolute = [absolute_media(r, Path(media_root)) for r in records]
    stage = f"proxy-{preset}"
    work = work_dir(stage, fingerprint(stage, cfg, {"preset": preset}, {"tokenizer": str(tokenizer_dir)}))
    return fit(stage, cfg, make_model, absolute, {"tokenizer": str(tokenizer_dir)}, Path(out), work)


def fold_plan(num_records: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, scored indices) of each proxy pair: one pair trained on all records that scores all of them
    (`folds` 1), or per seeded fold, a pair trained on the other folds that scores this one (cross-fitting)."""
    everything = np.arange(num_records)
    if folds == 1:
        return [(everything, everything)]
    if num_records < folds:
        raise ValueError(f"score.bootstrap.folds: {folds} folds need at least {folds} records, got {num_records}")
    fold_of = np.empty(num_records, dtype=np.int64)
    fold_of[np.random.default_rng([seed, folds]).permutation(num_records)] = everything % folds
    return [(everything[fold_of != k], everything[fold_of == k]) for k in range(folds)]


def bootstrap_scorers(cfg: BootstrapConfig, records: list[dict[str, Any]], media_root: str | Path,
                      tokenizer_dir: str | Path, out: str | Path, seed: int) -> tuple[Path, Path]:
    """Train the (small, large) proxy scorers on a seeded share of `records`; returns `<out>/small`, `<out>/large`."""
    if not Path(tokenizer_dir).is_dir():
        raise ValueError(f"{tokenizer_dir}: tokenizer directory not found (run `nvila tokenizer` first)")
    train = proxy_share(records, cfg.share, seed)
    paths = []
    for role, preset, steps in (("small", cfg.small_preset, cfg.small_steps), ("large", cfg.large_preset,
                                                                                cfg.large_steps)):
        path = train_proxy(preset, tokenizer_dir, train, media_root, steps, cfg.batch_size, cfg.lr, seed,
                           Path(out) / role, cfg.pack_tokens)
        meta = path / "meta.json"  # the trainer's run record, extended with the proxy's identity
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {
            "kind": "deltaloss-proxy", "role": role, "preset": preset, "steps": steps,
            "num_train_records": len(train)}, indent=2))
        paths.append(path)
    return paths[0], paths[1]
