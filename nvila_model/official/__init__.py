"""Import and export of the released NVILA checkpoint layout (NVlabs/VILA): `import_official`, `export_official`."""

from __future__ import annotations

from typing import Any

_API = {"import_official": "importer", "IMPORT_KIND": "importer", "export_official": "exporter"}


def __getattr__(name: str) -> Any:
    # Lazy, so that registering the CLI commands does not import torch and transformers.
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{_API[name]}"), name)


__all__ = sorted(_API)
