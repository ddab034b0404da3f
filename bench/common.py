"""Shared bench helpers: a generated corpus + tokenizer in a temp folder, child-process runs, result tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def make_corpus(root: Path, scale: float = 0.2, seed: int = 0, vocab_size: int = 512) -> tuple[Path, Path]:
    """Generate the synthetic corpus under `root` and train a tokenizer on it: (manifest dir, tokenizer dir)."""
    from nvila_model.data.config import GenerateConfig
    from nvila_model.data.generate import run_generate
    from nvila_model.data.manifest import conversation_text, read_manifest
    from nvila_model.tokenizer import train_tokenizer

    data = run_generate(GenerateConfig(scale=scale, seed=seed), root / "raw" / "synth")
    texts = [conversation_text(r["conversations"]) for r in read_manifest(data / "train.jsonl")]
    tok_dir = root / "tokenizer"
    train_tokenizer(texts, vocab_size).save_pretrained(str(tok_dir))
    return data, tok_dir


def run_children(script: str, variants: list[str], extra: list[str]) -> dict[str, dict[str, Any]]:
    """Run `script --child VARIANT ...` once per variant (own process: own peak memory); collect their JSON."""
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            target = Path(tmp) / f"{variant}.json"
            cmd = [sys.executable, script, "--child", variant, "--result", str(target), *extra]
            subprocess.run(cmd, check=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
            out[variant] = json.loads(target.read_text())
    return out


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
