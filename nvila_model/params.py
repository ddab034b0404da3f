"""Strict loading of one `params.yaml` key into its stage's config dataclass."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
DEFAULT_PARAMS = Path("params.yaml")


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read the whole params file; a missing or malformed file is a `ValueError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping of stage names")
    return data


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `values`, recursing into nested dataclasses; unknown keys raise."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        sub = _dataclass_in(hints[name])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{name}" if where else name)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type inside a hint like `Foo` or `Foo | None`, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def load_config(
    key: str, cls: type[T], path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> T:
    """Load `params.yaml[key]` as `cls`, with `overrides` applied on top (for CLI flags and flow parameters)."""
    params = read_params(path)
    if key not in params:
        raise ValueError(f"{path}: no top-level key {key!r}; present: {sorted(params)}")
    values = dict(params[key] or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, values, where=f"{path}:{key}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (for manifests and tracking)."""
    return dataclasses.asdict(cfg)
