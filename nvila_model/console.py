"""What a user reads on the console: progress bars only on a terminal (one line per log step otherwise), and known
library noise filtered. `configure_console()` is called once by the `nvila` entry point, before a stage imports them.
"""

from __future__ import annotations

import logging
import os
import re
import sys

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
    if not progress_bars():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub and transformers read it at import


def progress_line(name: str, step: int, max_steps: int, elapsed_s: float, metrics: dict[str, float],
                  steps_done: int | None = None) -> str:
    """One line of training progress, e.g. `image_sft step 20/120 (17%)  loss 2.31  lr 1.90e-04 ... eta 1m40s`;
    `steps_done` (default `step`) are the steps `elapsed_s` covers (fewer after a resume)."""
    parts = [f"{name} step {step}/{max_steps} ({step / max(max_steps, 1):.0%})"]
    for key, fmt in (("loss", ".4g"), ("grad_norm", ".3g"), ("learning_rate", ".2e"), ("samples_per_s", ".1f")):
        if key in metrics:
            parts.append(f"{'lr' if key == 'learning_rate' else key.replace('_per_', '/')} {metrics[key]:{fmt}}")
    done = step if steps_done is None else steps_done
    remaining = elapsed_s / done * (max_steps - step) if done > 0 else 0.0
    parts.append(f"elapsed {_duration(elapsed_s)} eta {_duration(remaining)}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
