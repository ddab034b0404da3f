"""The tokenizer stage: train the byte-level BPE on the training conversations and save it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from nvila_model.data.manifest import conversation_text
from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.manifest import staged_output, write_stage_manifest
from nvila_model.presets import build_config
from nvila_model.tokenizer import train_tokenizer
from nvila_model.train.config import ModelParams, TokenizerConfig


def run_tokenizer(cfg: TokenizerConfig, model_params: ModelParams, datasets: DatasetsConfig, data: str | Path,
                  out: str | Path) -> Path:
    """Train the tokenizer on the train text of `cfg.datasets` (in the corpus `data`) and write it to `out`."""
    registry = DatasetRegistry(datasets, data)
    texts = [conversation_text(r["conversations"]) for name in cfg.datasets for r in registry.records(name, "train")]
    if not texts:
        raise ValueError(f"tokenizer: datasets {cfg.datasets} hold no train text")
    config = build_config(model_params.preset, **model_params.overrides)
    vocab_size = cfg.vocab_size or config.text_config.vocab_size
    tokenizer = train_tokenizer(texts, vocab_size, system_prompt=config.system_prompt)
    inputs = {name: str(registry.manifest_path(name, "train")) for name in registry.entries}
    with staged_output(out) as tmp:
        tokenizer.save_pretrained(str(tmp))
        write_stage_manifest(tmp, "tokenizer", asdict(cfg), inputs=inputs, vocab_size=len(tokenizer))
    return Path(out)
