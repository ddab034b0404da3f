"""Named datasets and mixtures (params.yaml `datasets`): name -> manifest, media root, subsets, repeat factor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import DatasetsConfig
from .manifest import MEDIA_KEYS, MediaPathError, default_media_root, read_manifest, resolve_media


def absolute_media(record: dict[str, Any], root: Path) -> dict[str, Any]:
    """The record with its media paths resolved inside `root`; a path leaving it is a `ValueError` naming the record
    (validation quarantines such records; this stops an unvalidated dataset before any file is read)."""
    out = dict(record)
    try:
        for key in MEDIA_KEYS:
            value = record.get(key)
            if isinstance(value, list):
                out[key] = [str(resolve_media(v, root)) for v in value]
            elif value:
                out[key] = str(resolve_media(value, root))
    except MediaPathError as exc:
        raise MediaPathError(f"record {record.get('id')!r}: {exc}") from None
    return out


def repeat_records(records: list[dict[str, Any]], factor: float, seed: int = 0) -> list[dict[str, Any]]:
    """`floor(factor)` copies of every record plus a seeded random `frac(factor)` share of them, in order."""
    if factor < 0:
        raise ValueError(f"repeat factor must be >= 0, got {factor}")
    whole, frac = int(factor), factor - int(factor)
    extra = set(np.random.default_rng(seed).permutation(len(records))[: round(frac * len(records))].tolist())
    return [r for i, r in enumerate(records) for _ in range(whole + (i in extra))]


class DatasetRegistry:
    """Resolves a dataset or mixture name to records whose media paths are absolute (so roots can differ).

    `data_dir` is the pipeline's validated corpus (a stage input given on the command line); entries without their
    own manifest read `<data_dir>/{split}.jsonl`.
    """

    def __init__(self, cfg: DatasetsConfig, data_dir: str | Path | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.entries = dict(cfg.entries)
        self.mixtures = dict(cfg.mixtures)

    def names(self) -> list[str]:
        return sorted(self.entries) + sorted(self.mixtures)

    def manifest_path(self, name: str, split: str) -> Path:
        manifest = self.entries[name].manifest
        if manifest is None:
            if self.data_dir is None:
                raise ValueError(f"datasets.entries.{name}: no manifest, and no data folder was given (--data)")
            return self.data_dir / f"{split}.jsonl"
        return Path(manifest.format(split=split))

    def records(self, name: str, split: str, seed: int = 0) -> list[dict[str, Any]]:
        """All records of dataset or mixture `name` for `split`, repeat factors applied (repeats only in train)."""
        if name in self.mixtures:
            out = []
            for i, (part, weight) in enumerate(self.mixtures[name].items()):
                out += self._entry_records(part, split, float(weight), seed + i)
            return out
        if name not in self.entries:
            raise ValueError(f"dataset {name!r} is not registered in params.yaml `datasets`; known: {self.names()}")
        return self._entry_records(name, split, 1.0, seed)

    def _entry_records(self, name: str, split: str, weight: float, seed: int) -> list[dict[str, Any]]:
        entry = self.entries[name]
        path = self.manifest_path(name, split)
        root = Path(entry.media_root) if entry.media_root else default_media_root(path)
        try:
            records = [absolute_media(r, root) for r in read_manifest(path)
                       if not entry.subsets or r.get("subset") in entry.subsets]
        except MediaPathError as exc:
            raise MediaPathError(f"{path}: {exc}") from None
        factor = entry.repeat * weight if split == "train" else 1.0
        return repeat_records(records, factor, seed)
