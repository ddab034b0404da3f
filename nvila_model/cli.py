"""The console of the `nvila` command line: known library noise filtered, progress bars only on a terminal.

`configure_console()` is called once by the entry point, before a stage imports the libraries it quiets. Nothing here
changes what a stage computes, only what it prints (so, like the other `cli.py` modules, it is no stage dependency).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

# (logger, message pattern): messages that are known, understood, and not the user's to act on.
NOISE = (
    # torchao ships prebuilt GPU kernels (mxfp8, CUTLASS sm90a) that fail to load on CPU builds; nothing here uses them
    ("torchao", r"^Failed to load .*torchao/_C"),
    # torchao registers its enums with an older torch API at import; a deprecation for torchao, not for us
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported by torch\.compile"),
    # DeepSpeed on a machine without an accelerator; the device a stage used is recorded in its meta.json
    ("DeepSpeed", r"^Setting accelerator to CPU"),
    # great-expectations names a temporary docs folder it never fills: validation builds its data docs in its output
    ("great_expectations.data_context.types.base", r"for ephemeral docs site$"),
)

# (message pattern, category): Python warnings of the same kind; a pattern matches the start of the message.
NOISY_WARNINGS = (
    # AutoAWQ's farewell notice at import (it moved to llm-compressor); its CPU kernels are what the W4A16 path uses
    (r"\s*I have left this message as the final dev message", DeprecationWarning),
    # AutoAWQ's GEMM kernels are a CUDA extension; on CPU its own PyTorch implementation runs, as meta.json records
    (r"Using naive \(slow\) implementation", UserWarning),
    # the W8A8 vision tower's CPU backend is torch's quantized tensors, which torch plans to retire
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel", UserWarning),
    # peft reads transformers' deprecated `is_gradient_checkpointing` property whenever it wraps a model (LoRA)
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # the registered pyfunc carries an explicit input signature (tasks/registry.py) instead of type hints or an example
    (r"(\x1b\[[0-9;]*m)?Add type hints to the `predict` method", UserWarning),
    (r"(\x1b\[[0-9;]*m)?An input example was not provided", UserWarning),
)


def progress_bars() -> bool:
    """Whether to draw progress bars: only when stderr is a terminal. Elsewhere (a log file, CI, a pipe) every frame
    of a bar ends up in one line joined by carriage returns, thousands of characters long."""
    return sys.stderr.isatty()


class DropMessages(logging.Filter):
    """Drops the records of a logger whose message matches `pattern`."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def configure_console() -> None:
    """Filter the `NOISE` messages and, without a terminal, turn off the Hugging Face progress bars (model loading
    and saving). Idempotent; call it at the entry point, before torchao / transformers are imported."""
    for name, pattern in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(DropMessages(pattern))
    for message, category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if not progress_bars():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub and transformers read it at import
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm's default for bars a library draws itself (AutoAWQ's)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # model registration's download bar
