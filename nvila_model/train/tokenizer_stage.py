"""The tokenizer stage: train the byte-level BPE on the training conversations and save it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from nvila_model.data.manifest import conversation_text
from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.manifest import write_stage_manifest
from nvila_model.presets import build_config
from nvila_model.tokenizer import train_tokenizer
from nvila_model.train.config import ModelParams


@dataclass
class TokenizerConfig:
    """`params.yaml:tokenizer`: the datasets whose train text the BPE learns from, and its size."""

    datasets: list[str] = field(default_factory=lambda: ["synth-all"])
    vocab_size: int | None = None    # default: the model preset's LLM vocabulary
    out_dir: str = "runs/tokenizer"


def run_tokenizer(cfg: TokenizerConfig, model_params: ModelParams, datasets: DatasetsConfig) -> Path:
    registry = DatasetRegistry(datasets)
    texts = [conversation_text(r["conversations"]) for name in cfg.datasets for r in registry.records(name, "train")]
    if not texts:
        raise ValueError(f"tokenizer: datasets {cfg.datasets} hold no train text")
    config = build_config(model_params.preset, **model_params.overrides)
    vocab_size = cfg.vocab_size or config.text_config.vocab_size
    tokenizer = train_tokenizer(texts, vocab_size, system_prompt=config.system_prompt)
    out = Path(cfg.out_dir)
    tokenizer.save_pretrained(str(out))
    inputs = {name: str(registry.manifest_path(name, "train")) for name in registry.entries}
    write_stage_manifest(out, "tokenizer", asdict(cfg), inputs=inputs, vocab_size=len(tokenizer))
    return out
