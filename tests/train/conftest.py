"""A small generated corpus, a trained tokenizer and a params file for training tests (all under tmp)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DATASETS = {
    "entries": {
        "synth-image": {"manifest": "data/raw/synth/{split}.jsonl",
                        "subsets": ["attributes", "counting", "spatial", "text", "chart", "compare"]},
        "synth-video": {"manifest": "data/raw/synth/{split}.jsonl", "subsets": ["motion", "order", "flashes"]},
    },
    "mixtures": {"synth-all": {"synth-image": 1.0, "synth-video": 1.0}},
}


def stage_params(stage: str, **overrides) -> dict:
    """Small but real settings for `stage` (fp32, few steps, frequent checkpoints)."""
    base = {"out_dir": f"runs/{stage}", "datasets": ["synth-all"], "batch_size": 4, "max_steps": 4,
            "logging_steps": 2, "save_steps": 2, "precision": "fp32", "max_length": 512}
    modules = {"projector_init": ["projector"], "vision_pretrain": ["vision_tower", "projector"],
               "token_pretrain": ["projector", "language_model"],
               "image_sft": ["vision_tower", "projector", "language_model"],
               "video_sft": ["vision_tower", "projector", "language_model"]}[stage]
    base["train_modules"] = modules
    base["lr"] = {m: 1e-3 * (0.1 if m == "vision_tower" else 1.0) for m in modules}
    return base | overrides


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A generated corpus (a tenth of the default size) plus tokenizer, in a project-like folder."""
    from nvila_model.data.generate import GenerateConfig, run_generate
    from nvila_model.data.registry import DatasetsConfig
    from nvila_model.params import from_dict
    from nvila_model.train.config import ModelParams
    from nvila_model.train.tokenizer_stage import TokenizerConfig, run_tokenizer

    root = tmp_path_factory.mktemp("project")
    run_generate(GenerateConfig(out_dir=str(root / "data/raw"), scale=0.1, seed=3))
    datasets = from_dict(DatasetsConfig, _absolute(DATASETS, root))
    run_tokenizer(TokenizerConfig(out_dir=str(root / "runs/tokenizer")), ModelParams(), datasets)
    return root


def _absolute(datasets: dict, root: Path) -> dict:
    entries = {k: v | {"manifest": str(root / v["manifest"])} for k, v in datasets["entries"].items()}
    return {"entries": entries, "mixtures": datasets["mixtures"]}


@pytest.fixture()
def project(corpus_dir, tmp_path, monkeypatch) -> Path:
    """A working directory whose params.yaml points at the shared corpus and tokenizer."""
    params = {"model": {"preset": "tiny"}, "datasets": _absolute(DATASETS, corpus_dir)}
    for stage in ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft"):
        params[stage] = stage_params(stage, tokenizer_dir=str(corpus_dir / "runs/tokenizer"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path
