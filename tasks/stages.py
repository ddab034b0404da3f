"""The one adapter per pipeline stage: the params keys it reads, its library entry point, inputs and output.

Prefect tasks (`tasks.stage_task`) call the library entry points in-process through these adapters; `dvc.yaml`
calls the same entry points through the `nvila` CLI. In-process rather than `nvila` subprocesses because it lets
the library log step metrics through the live `Tracker` and saves a torch import per stage; memory isolation is
not needed at the presets this runs on. To re-point a stage, edit its entry in `STAGES`.

A stage's resolved config is `{params key: dict}` for every key it reads (its own first, then e.g. `model`,
`datasets`), so the task cache key changes when any of them does. Library modules are imported lazily.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nvila_model.params import DEFAULT_PARAMS, from_dict, load_config, to_dict

TRAIN_STAGES = ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")
MODEL = ("model", "nvila_model.train.config:ModelParams")
DATASETS = ("datasets", "nvila_model.data.registry:DatasetsConfig")
Configs = dict[str, dict[str, Any]]


def merge_configs(base: Configs | None, extra: Configs | None) -> Configs:
    """`base` with each key's fields updated by `extra`'s (a new dict; fields are replaced, not deep-merged)."""
    merged = {key: dict(fields) for key, fields in (base or {}).items()}
    for key, fields in (extra or {}).items():
        merged[key] = {**merged.get(key, {}), **fields}
    return merged


def _obj(dotted: str) -> Any:
    """Import `package.module:attr`."""
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """How to run one stage: `entry([name,] own_cfg, *other_cfgs, tracker=...)`, configs from params.yaml keys."""

    name: str
    keys: tuple[tuple[str, str], ...]  # (params key, "module:ConfigClass"); the stage's own key first
    entry: str  # "module:function"
    out: Callable[[Any], str]  # output path, from the built own config
    deps: Callable[[list[Any]], list[str]]  # data/model paths read, from the built configs
    code: tuple[str, ...]  # source files/folders it runs, relative to the source root (also dvc.yaml deps)
    pass_stage: bool = False  # the entry takes the stage name first (the five training stages share one)
    num_args: int | None = None  # how many configs the entry takes (None: all; the rest are read indirectly)

    @property
    def key(self) -> str:
        return self.keys[0][0]

    def load(self, params: str | Path = DEFAULT_PARAMS, overrides: Configs | None = None) -> Configs:
        """Every key's resolved config as plain dicts (params.yaml plus overrides, checked by the classes)."""
        overrides = overrides or {}
        return {key: to_dict(load_config(key, _obj(cls), params, overrides.get(key))) for key, cls in self.keys}

    def build(self, configs: Configs) -> list[Any]:
        """The config dataclasses, in `keys` order."""
        return [from_dict(_obj(cls), configs[key], where=key) for key, cls in self.keys]

    def fields(self, key: str) -> set[str]:
        cls = dict(self.keys).get(key)
        return {f.name for f in dataclasses.fields(_obj(cls))} if cls else set()

    def output(self, configs: Configs) -> str:
        return self.out(self.build(configs)[0])

    def run(self, configs: Configs, tracker: Any) -> Path:
        """Call the library entry point; passes `tracker` when the entry accepts one."""
        entry = _obj(self.entry)
        cfgs = self.build(configs)[: self.num_args]
        args = [self.name, *cfgs] if self.pass_stage else cfgs
        kwargs = {"tracker": tracker} if "tracker" in inspect.signature(entry).parameters else {}
        result = entry(*args, **kwargs)  # an output path, or (eval) the metrics it wrote
        return Path(result) if isinstance(result, str | Path) else Path(self.out(cfgs[0]))


def _own(*names: str) -> Callable[[list[Any]], list[str]]:
    """Deps read from the stage's own config attributes (empty values skipped)."""
    return lambda cfgs: [str(getattr(cfgs[0], n)) for n in names if getattr(cfgs[0], n, None)]


def _train_deps(cfgs: list[Any]) -> list[str]:
    """A training stage reads its init checkpoint (or the tokenizer), the pruned manifest and its datasets' folders."""
    cfg, _, datasets = cfgs
    paths = [cfg.init_from or cfg.tokenizer_dir, cfg.pruned_manifest]
    for entry in datasets.entries.values():
        paths.append(str(Path(entry["manifest"]).parent))
    return sorted({p for p in paths if p})


def _eval_deps(cfgs: list[Any]) -> list[str]:
    """Eval reads the model, the chance table and its datasets' folders (registry from `datasets`)."""
    cfg, datasets = cfgs
    paths = [cfg.checkpoint, cfg.subsets_file, *(str(Path(e["manifest"]).parent) for e in datasets.entries.values())]
    return sorted({p for p in paths if p})


COMMON = ("nvila_model/params.py", "nvila_model/manifest.py")
LIB = ("nvila_model/config.py", "nvila_model/presets.py", "nvila_model/modeling.py", "nvila_model/projector.py",
       "nvila_model/dynamic_s2.py", "nvila_model/video.py", "nvila_model/tokenizer.py", "nvila_model/processor.py",
       "nvila_model/data")

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec("generate", (("generate", "nvila_model.data.generate:GenerateConfig"),),
                  "nvila_model.data.generate:run_generate", lambda c: f"{c.out_dir}/{c.name}", lambda cfgs: [],
                  (*COMMON, "nvila_model/data")),
        StageSpec("validate", (("validate", "nvila_model.data.validate:ValidateConfig"),),
                  "nvila_model.data.validate:run_validate", lambda c: f"{c.out_dir}/{c.name}",
                  lambda cfgs: [p for p in (f"{cfgs[0].raw_dir}/{cfgs[0].name}", cfgs[0].tokenizer) if p],
                  (*COMMON, "nvila_model/data")),
        StageSpec("tokenizer", (("tokenizer", "nvila_model.train.tokenizer_stage:TokenizerConfig"), MODEL, DATASETS),
                  "nvila_model.train.tokenizer_stage:run_tokenizer", lambda c: c.out_dir,
                  lambda cfgs: sorted({str(Path(e["manifest"]).parent) for e in cfgs[2].entries.values()}),
                  (*COMMON, *LIB, "nvila_model/train/tokenizer_stage.py")),
        StageSpec("score", (("score", "nvila_model.deltaloss.config:ScoreConfig"),),
                  "nvila_model.deltaloss.stage:run_score", lambda c: c.out_dir,
                  _own("manifest", "tokenizer_dir", "small_checkpoint", "large_checkpoint"),
                  (*COMMON, *LIB, "nvila_model/deltaloss", "nvila_model/train")),
        StageSpec("prune", (("prune", "nvila_model.deltaloss.config:PruneConfig"),),
                  "nvila_model.deltaloss.prune:run_prune", lambda c: c.out_dir, _own("scores", "manifest"),
                  (*COMMON, "nvila_model/deltaloss/config.py", "nvila_model/deltaloss/prune.py")),
        *[
            StageSpec(stage, ((stage, "nvila_model.train.config:StageConfig"), MODEL, DATASETS),
                      "nvila_model.train.stage:run_stage", lambda c: c.out_dir, _train_deps,
                      (*COMMON, *LIB, "nvila_model/train"), pass_stage=True)
            for stage in TRAIN_STAGES
        ],
        StageSpec("eval", (("eval", "nvila_model.evaluate:EvalConfig"), DATASETS), "nvila_model.evaluate:run_eval",
                  lambda c: c.out_dir, _eval_deps, (*COMMON, *LIB, "nvila_model/evaluate.py"), num_args=1),
        StageSpec("finetune", (("finetune", "nvila_model.finetune.config:FinetuneConfig"),),
                  "nvila_model.finetune.run:run_finetune", lambda c: c.output, _own("checkpoint", "data"),
                  (*COMMON, *LIB, "nvila_model/finetune", "nvila_model/train")),
        StageSpec("quantize", (("quantize", "nvila_model.quant.config:QuantizeConfig"),),
                  "nvila_model.quant.quantize:run_quantize", lambda c: c.output, _own("checkpoint", "calib_manifest"),
                  (*COMMON, *LIB, "nvila_model/quant")),
    ]
}

# Pipeline order; `eval_quantized` is the eval stage pointed at the quantized model (see flows.parts).
ORDER = ("generate", "validate", "tokenizer", "score", "prune", *TRAIN_STAGES, "eval", "finetune", "quantize",
         "eval_quantized")


def spec(stage: str) -> StageSpec:
    """The adapter of `stage` (`eval_quantized` shares eval's)."""
    name = "eval" if stage == "eval_quantized" else stage
    if name not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {list(ORDER)}")
    return STAGES[name]


def available(stage: str) -> bool:
    """Whether the stage's library entry point and config classes have landed (importable)."""
    try:
        _obj(spec(stage).entry)
        for _, cls in spec(stage).keys:
            _obj(cls)
    except (ImportError, AttributeError):
        return False
    return True
