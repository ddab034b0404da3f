"""Stage output manifests: what a directory is, the config that made it and its input hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def git_revision(cwd: str | Path | None = None) -> str:
    """The current git commit (with '-dirty' when the tree has changes), or 'unknown' outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hash_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted); 'missing' if absent."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return "missing"
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_stage_manifest(
    out_dir: str | Path, stage: str, config: dict[str, Any], inputs: dict[str, str | Path] | None = None, **extra: Any
) -> Path:
    """Write `out_dir/manifest.json` describing a finished stage output.

    No timestamp and no git revision: a stage re-run on unchanged inputs writes the same bytes, also from a later
    commit, so DVC sees the same output and the stages downstream of it are restored from its cache. DVC's experiment
    (its commit) and the MLflow run (tag `git.revision`) record when and from what it ran."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "stage": stage,
        "config": config,
        "inputs": {name: {"path": str(p), "sha256": hash_path(p)} for name, p in (inputs or {}).items()},
        **extra,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path


def staging_dir(out: str | Path) -> Path:
    """The temporary sibling a stage writes into before its output replaces `out` (fixed per output, so every
    process of a distributed run agrees on it)."""
    out = Path(out)
    return out.with_name(f".{out.name}.tmp")


def replace_dir(new: Path, out: Path) -> None:
    """Put folder `new` at `out`; the previous `out`, if any, is removed only after the new one is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_output(out: str | Path, swap: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out` to write a stage's output into.

    On success it replaces `out`; on failure it is removed and `out` (the last good output) is left untouched. A
    stage therefore never destroys its previous output before the new one is complete. `swap=False` (the non-main
    processes of a distributed run) writes into the same folder without swapping.
    """
    out = Path(out)
    tmp = staging_dir(out)
    if swap:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        if swap:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if swap:
        replace_dir(tmp, out)
