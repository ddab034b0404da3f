"""params.yaml: typed, strict loading of every top-level key into its config class, checked before any work.

Each stage's settings are a pydantic dataclass (`@config`): types, ranges and allowed values are declared on the
fields, unknown keys are refused. `load_params` validates the whole file at once and reports every problem as one
line naming the file, the key and what is allowed. File paths are not settings: stages get them as command-line
options from `dvc.yaml`, the one definition of the pipeline.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

T = TypeVar("T")
DEFAULT_PARAMS = Path("params.yaml")
STRICT = ConfigDict(extra="forbid")
# Keys read by the orchestration (flows.config validates them), not by a stage of the library.
ORCHESTRATION_KEYS = ("pipeline", "sweep", "frontier")
SEED_KEY = "seed"  # one seed for every stage; a stage's own `seed` field defaults to it
# The five training stages, each a params key holding a `StageConfig` (the registry below; train/config.py).
TRAIN_STAGES = ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")
# `init_checkpoints`: released NVILA checkpoints (the official layout) to adapt instead of training from scratch,
# {name: folder}. Each gets its own import -> fine-tune -> quantize -> eval stages in dvc.yaml (`@name`).
InitCheckpoints = dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")], str]
_READ: set[str] = set()  # the keys this process has loaded (see keys_read)
DEVICE_NAMES = ("auto", "cpu", "cuda")  # and cuda:N


def device_name(requested: str) -> str:
    """`requested` if it names a device (auto, cpu, cuda or cuda:N), else a one-line `ValueError` (no GPU check)."""
    name = str(requested).strip().lower()
    if name in DEVICE_NAMES or (name.startswith("cuda:") and name[5:].isdigit()):
        return requested
    raise ValueError(f"{requested!r} is not a device; use auto, cpu, cuda or cuda:N")


# A stage's `device` setting (auto: cuda when available), checked on load; whether this host has the GPU asked for
# is checked by `nvila_model.device.resolve_device` when the stage starts. Here, not there: no torch import.
DeviceSetting = Annotated[str, AfterValidator(device_name)]


def config(cls: type[T]) -> type[T]:
    """Class decorator: a dataclass validated by pydantic on construction (types, ranges) that refuses unknown keys."""
    return pydantic_dataclass(cls, config=STRICT)


def library_keys() -> dict[str, Any]:
    """params.yaml top-level key -> the config class (or type) of the stage settings it holds. Classes are named,
    not imported: a stage command imports only the config modules of the keys it reads."""
    keys: dict[str, Any] = {
        SEED_KEY: int,
        "model": "nvila_model.train.config:ModelParams",
        "init_checkpoints": InitCheckpoints,
        "peers": "nvila_model.peer.config:Peers",
        "peer": "nvila_model.peer.config:PeerConfig",
        "datasets": "nvila_model.data.config:DatasetsConfig",
        "generate": "nvila_model.data.config:GenerateConfig",
        "validate": "nvila_model.data.config:ValidateConfig",
        "tokenizer": "nvila_model.train.config:TokenizerConfig",
        "score": "nvila_model.deltaloss.config:ScoreConfig",
        "prune": "nvila_model.deltaloss.config:PruneConfig",
        # The YAML anchor of the shared training settings: merged into the stage keys, and checked there.
        "train_defaults": dict[str, Any],
        "eval": "nvila_model.train.config:EvalConfig",
        "finetune": "nvila_model.finetune.config:FinetuneConfig",
        "quantize": "nvila_model.quant.config:QuantizeConfig",
    }
    return keys | dict.fromkeys(TRAIN_STAGES, "nvila_model.train.config:StageConfig")


def resolve(cls: Any) -> Any:
    """A class given as "package.module:Name" (imported lazily), or the class itself."""
    if isinstance(cls, str):
        module, _, name = cls.partition(":")
        return getattr(importlib.import_module(module), name)
    return cls


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read the whole params file; a missing or malformed file is a `ValueError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the params file: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping of stage names")
    return data


def _field_names(cls: Any, loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the (nested) config class at `loc`, to list what a misspelt key could have been."""
    for part in loc:
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = next((a for a in (hints[part], *typing.get_args(hints[part])) if dataclasses.is_dataclass(a)), None)
    return sorted(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


def problems(exc: ValidationError, cls: Any, where: str) -> list[str]:
    """One line per validation error: where (file: key.field), what is wrong, what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        name = ".".join(str(p) for p in (where, *loc) if p != "")
        if err["type"] == "unexpected_keyword_argument":
            allowed = _field_names(cls, loc[:-1])
            lines.append(f"{name}: unknown key" + (f"; allowed: {allowed}" if allowed else ""))
        elif err["type"] in ("missing_argument", "missing"):
            lines.append(f"{name}: required setting is missing")
        elif err["type"] == "value_error":  # a cross-field check of the class (__post_init__)
            lines.append(f"{name}: {err['ctx']['error']}")
        else:
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
    return lines


def parse(cls: type[T] | str, values: Any, where: str = "") -> T:
    """Build config class `cls` from plain `values`; every problem in one `ValueError`, a line each."""
    cls = resolve(cls)
    try:
        return TypeAdapter(cls).validate_python({} if values is None and dataclasses.is_dataclass(cls) else values)
    except ValidationError as exc:
        raise ValueError("\n".join(problems(exc, cls, where or getattr(cls, "__name__", "config")))) from None


def _with_seed(cls: Any, values: Any, seed: Any) -> Any:
    """The stage's values with the file's top-level seed filled in where the class has a seed and none is set."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if SEED_KEY in fields and isinstance(values, dict | type(None)) and seed is not None:
        return {SEED_KEY: seed, **(values or {})}
    return values


def load_params(path: str | Path = DEFAULT_PARAMS, keys: list[str] | None = None,
                data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every library key of the params file (or only `keys`) as its validated config object.

    All problems of the file are reported together, one line each, before anything runs: unknown top-level keys,
    unknown or misspelt fields, wrong types, values out of range. `data` is the file's content when already read.
    """
    data = read_params(path) if data is None else data
    known = library_keys()
    errors = [f"{path}: {key}: unknown top-level key; allowed: {sorted([*known, *ORCHESTRATION_KEYS])}"
              for key in data if key not in known and key not in ORCHESTRATION_KEYS]
    wanted = list(known) if keys is None else keys
    out: dict[str, Any] = {}
    for key in wanted:
        if key not in known:
            raise ValueError(f"{key}: not a params key of a stage; known: {sorted(known)}")
        if key not in data:
            if keys is not None:
                errors.append(f"{path}: no top-level key {key!r}; present: {sorted(data)}")
            continue
        cls = resolve(known[key])
        try:
            out[key] = parse(cls, _with_seed(cls, data[key], data.get(SEED_KEY)), f"{path}: {key}")
        except ValueError as exc:
            errors.extend(str(exc).splitlines())
    if errors:
        raise ValueError("\n".join(errors))
    _READ.update(out)
    _READ.update(SEED_KEY for key, cfg in out.items() if key != SEED_KEY and _seeded(cfg, data.get(key)))
    return out


def _seeded(cfg: Any, values: Any) -> bool:
    """Whether the config's seed came from the file's top-level seed (it has one, and its key does not set it)."""
    has_seed = dataclasses.is_dataclass(cfg) and SEED_KEY in {f.name for f in dataclasses.fields(cfg)}
    return has_seed and not (isinstance(values, dict) and SEED_KEY in values)


def keys_read() -> set[str]:
    """The params keys this process loaded, the top-level seed included when a stage took it (for tracing)."""
    return set(_READ)


def load_config(key: str, path: str | Path = DEFAULT_PARAMS) -> Any:
    """The validated config object of one key (the file's top level is checked for unknown keys too)."""
    return load_params(path, keys=[key])[key]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (for manifests and tracking)."""
    return dataclasses.asdict(cfg)


def assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `data["a"]["b"]["c"] = value` for `dotted` "a.b.c" (the form of `dvc exp run -S a.b.c=value`)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
