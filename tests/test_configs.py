"""Every shipped params file loads: each top-level key through its stage's config dataclass, and unknown keys fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvila_model.params import from_dict, load_config, read_params
from nvila_model.presets import build_config
from nvila_model.train.config import STAGES, ModelParams, StageConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "params.yaml", *sorted((REPO / "configs/recipes").glob("*.yaml"))]


def config_classes() -> dict[str, type]:
    from flows.config import PipelineConfig, SweepConfig
    from nvila_model.data.generate import GenerateConfig
    from nvila_model.data.registry import DatasetsConfig
    from nvila_model.data.validate import ValidateConfig
    from nvila_model.deltaloss.config import PruneConfig, ScoreConfig
    from nvila_model.evaluate import EvalConfig
    from nvila_model.finetune import FinetuneConfig
    from nvila_model.quant.config import QuantizeConfig
    from nvila_model.train.tokenizer_stage import TokenizerConfig

    classes = {"model": ModelParams, "datasets": DatasetsConfig, "generate": GenerateConfig,
               "validate": ValidateConfig, "tokenizer": TokenizerConfig, "score": ScoreConfig,
               "prune": PruneConfig, "eval": EvalConfig, "finetune": FinetuneConfig, "quantize": QuantizeConfig,
               "pipeline": PipelineConfig, "sweep": SweepConfig}
    return classes | {stage: StageConfig for stage in STAGES}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_key_of_every_shipped_params_file_loads(path):
    classes = config_classes()
    params = read_params(path)
    unexpected = set(params) - set(classes) - {"train_defaults"}  # a YAML anchor holder, read by no stage
    assert not unexpected, f"{path.name}: keys without a config class {sorted(unexpected)}"
    for key in params:
        if key in classes:
            cfg = load_config(key, classes[key], path)
            if isinstance(cfg, StageConfig):
                cfg.validate(key)
            elif callable(getattr(cfg, "validate", None)):
                cfg.validate()
    model = load_config("model", ModelParams, path)
    assert build_config(model.preset, **model.overrides).tokens_per_tile > 0


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("projector_init:\n  out_dir: x\n  train_modules: [projector]\n  lr: {projector: 1.0}\n"
                   "  datasets: [d]\n  learning_rat: 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\]"):
        load_config("projector_init", StageConfig, bad)
    with pytest.raises(ValueError, match="no top-level key 'eval'"):
        load_config("eval", StageConfig, bad)
    with pytest.raises(ValueError, match="params file not found"):
        read_params(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(ModelParams, {"preset": "tiny", "size": 3})
