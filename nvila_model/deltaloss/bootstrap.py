"""Bootstrap scorers: when no checkpoints are configured, train a small and a large proxy briefly on a random share.

This makes the first run of the pipeline self-contained. A production run should instead score with the previous
run's trained model as the large scorer (`score.large_checkpoint`) and a smaller preset as the small one: a proxy
trained for a few hundred steps only separates what is easy to learn from what contradicts the rest of the data.

`train_proxy` is the single training call; it goes through the same Trainer path as the five stages
(`nvila_model.train.stage.fit`).
"""

from __future__ import annotations

import functools
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
                align_steps: int = 0, vision_lr_ratio: float = 1.0) -> Path:
    """Train preset `preset` from scratch with the project trainer and save a checkpoint dir to `out`: first
    `align_steps` of alignment on the image records, the LLM frozen (half the projector alone, half the vision
    tower with it), then `steps` on all records and modules; one LR (`lr`, the vision tower's times
    `vision_lr_ratio`), packed as the stages are. Each alignment phase is written beside `out`
    (`<out>-align-projector`, `<out>-align-vision`); the next starts from it."""
    from nvila_model.checkpoint import load_checkpoint
    from nvila_model.data.manifest import record_kind
    from nvila_model.data.registry import absolute_media
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer
    from nvila_model.train.config import MODULES, StageConfig
    from nvila_model.train.stage import fingerprint, fit, work_dir

    def fresh_model():
        tokenizer = load_tokenizer(tokenizer_dir)
        config = build_config(preset)
        if len(tokenizer) > config.text_config.vocab_size:
            config = build_config(preset, **{"text.vocab_size": len(tokenizer)})
        config.text_config.pad_token_id = tokenizer.pad_token_id
        config.text_config.eos_token_id = tokenizer.eos_token_id
        return NVILAForConditionalGeneration(config), NVILAProcessor(tokenizer, config)

    absolute = [absolute_media(r, Path(media_root)) for r in records]
    images = [r for r in absolute if record_kind(r) in ("image", "images")]
    if align_steps and not images:
        raise ValueError("score.bootstrap.large_align_steps: the proxy's records hold no images to align on")
    lrs = dict.fromkeys(MODULES, lr) | {"vision_tower": lr * vision_lr_ratio}
    phases = [("-align-projector", align_steps // 2, ["projector"], images),
              ("-align-vision", align_steps - align_steps // 2, ["vision_tower", "projector"], images),
              ("", steps, list(MODULES), absolute)]
    make_model, inputs = fresh_model, {"tokenizer": str(tokenizer_dir)}
    for suffix, count, modules, phase_records in [phase for phase in phases if phase[1] > 0]:
        cfg = StageConfig(train_modules=modules, lr={m: lrs[m] for m in modules}, datasets=["bootstrap-share"],
                          batch_size=batch_size, max_steps=count, max_grad_norm=5.0,
                          save_steps=count, logging_steps=count, seed=seed, resume=False)
        stage = f"proxy-{preset}{suffix}"
        work = work_dir(stage, fingerprint(stage, cfg, {"preset": preset}, inputs))
        path = fit(stage, cfg, make_model, phase_records, inputs, Path(f"{out}{suffix}"), work)
        make_model = functools.partial(load_checkpoint, path, device=None, allow_quantized=False)
        inputs = {"init_from": str(path)}
    return path


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
    for role, preset, align, steps in (("small", cfg.small_preset, 0, cfg.small_steps),
                                       ("large", cfg.large_preset, cfg.large_align_steps, cfg.large_steps)):
        path = train_proxy(preset, tokenizer_dir, train, media_root, steps, cfg.batch_size, cfg.lr, seed,
                           Path(out) / role, align, cfg.vision_lr_ratio)
        meta = path / "meta.json"  # the trainer's run record, extended with the proxy's identity
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {
            "kind": "deltaloss-proxy", "role": role, "preset": preset, "steps": steps, "align_steps": align,
            "num_train_records": len(train)}, indent=2))
        paths.append(path)
    return paths[0], paths[1]
