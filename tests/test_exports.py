"""The package exports its main classes at the top, transformers-style, without importing torch on `import`."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_main_classes_are_exported_at_the_top() -> None:
    from nvila_model import NVILAConfig, NVILAForConditionalGeneration, NVILAProcessor, build_config
    from nvila_model.config import NVILAConfig as Config
    from nvila_model.modeling import NVILAForConditionalGeneration as Model
    from nvila_model.processor import NVILAProcessor as Processor

    assert (NVILAConfig, NVILAForConditionalGeneration, NVILAProcessor) == (Config, Model, Processor)
    assert isinstance(build_config("tiny"), NVILAConfig)
    import nvila_model

    assert set(nvila_model.__all__) <= set(dir(nvila_model))
    with pytest.raises(AttributeError, match="no attribute 'NVILAModel'"):
        nvila_model.NVILAModel  # noqa: B018


def test_import_stays_cheap() -> None:
    code = "import sys, nvila_model; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
