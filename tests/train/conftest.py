"""A small generated corpus, a trained tokenizer and a params file for training tests (all under tmp)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DATASETS = {
    "entries": {
        "synth-image": {"subsets": ["attributes", "counting", "spatial", "text", "chart", "compare"]},
        "synth-video": {"subsets": ["motion", "order", "flashes"]},
    },
    "mixtures": {"synth-all": {"synth-image": 1.0, "synth-video": 1.0}},
}


def stage_params(stage: str, **overrides) -> dict:
    """Small but real settings for `stage` (fp32, few steps, frequent checkpoints)."""
    base = {"datasets": ["synth-all"], "batch_size": 4, "max_steps": 4, "logging_steps": 2, "save_steps": 2,
            "precision": "fp32", "max_length": 512}
    modules = {"projector_init": ["projector"], "vision_pretrain": ["vision_tower", "projector"],
               "token_pretrain": ["projector", "language_model"],
               "image_sft": ["vision_tower", "projector", "language_model"],
               "video_sft": ["vision_tower", "projector", "language_model"]}[stage]
    base["train_modules"] = modules
    base["lr"] = {m: 1e-3 * (0.1 if m == "vision_tower" else 1.0) for m in modules}
    return base | overrides


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A generated corpus (a tenth of the default size) and its tokenizer: `data/raw/synth`, `runs/tokenizer`."""
    from nvila_model.data.config import DatasetsConfig, GenerateConfig
    from nvila_model.data.generate import run_generate
    from nvila_model.train.config import ModelParams, TokenizerConfig
    from nvila_model.train.tokenizer_stage import run_tokenizer

    root = tmp_path_factory.mktemp("project")
    data = run_generate(GenerateConfig(scale=0.1, seed=3), root / "data/raw/synth")
    run_tokenizer(TokenizerConfig(), ModelParams(), DatasetsConfig(**DATASETS), data, root / "runs/tokenizer")
    return root


@pytest.fixture()
def project(corpus_dir, tmp_path, monkeypatch) -> Path:
    """A working directory with a params.yaml of small stage settings; the corpus and tokenizer are shared."""
    params = {"seed": 0, "model": {"preset": "tiny"}, "datasets": DATASETS,
              **{stage: stage_params(stage) for stage in
                 ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NVILA_WORK_DIR", str(tmp_path / ".nvila" / "work"))
    return tmp_path
