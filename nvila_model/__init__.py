"""nvila_model: the NVILA ('scale then compress') visual language model library shared by every stage.

The main classes are exported here, transformers-style, and imported on first use so that `import nvila_model`
(and every `nvila --help`) stays cheap: `from nvila_model import NVILAConfig, NVILAForConditionalGeneration,
NVILAProcessor`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
TYPE_CHECKING = False  # the typing.TYPE_CHECKING idiom without importing typing (type checkers honour it)

_EXPORTS = {
    "NVILAConfig": "nvila_model.config",
    "NVILAForConditionalGeneration": "nvila_model.modeling",
    "NVILAProcessor": "nvila_model.processor",
    "build_config": "nvila_model.presets",
}
__all__ = ["NVILAConfig", "NVILAForConditionalGeneration", "NVILAProcessor", "build_config"]

if TYPE_CHECKING:
    from nvila_model.config import NVILAConfig
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor


def __getattr__(name: str) -> object:
    """Import an exported class on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nvila_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
