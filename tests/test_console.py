"""What a user reads: known library noise is filtered at the entry point, progress lines are short and complete."""

from __future__ import annotations

import io
import logging
import os

import pytest

from nvila_model import cli as console
from nvila_model.train.hf_trainer import progress_line

NOISY = {
    "torchao": "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
               "Could not load this library",
    "torch.utils._pytree": "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by "
                           "torch.compile as an opaque value type.",
    "DeepSpeed": "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
    "great_expectations.data_context.types.base": "Created temporary directory '/tmp/tmpx' for ephemeral docs site",
}


def _remove_filters() -> None:
    for name, _ in console.NOISE:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, console.DropMessages)]:
            logger.removeFilter(f)


@pytest.fixture()
def clean_filters():
    _remove_filters()  # an earlier test may have run the entry point
    yield
    _remove_filters()


def _emit(name: str, message: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_known_noise_is_dropped_and_the_rest_kept(clean_filters, monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(_emit(name, message) for name, message in NOISY.items())  # loud before
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    console.configure_console()
    console.configure_console()  # idempotent: one filter per logger
    assert all(len(logging.getLogger(name).filters) == 1 for name in NOISY)
    assert not any(_emit(name, message) for name, message in NOISY.items())
    assert _emit("torchao", "Skipping import of cpp extensions: a real problem")  # other messages still pass
    assert _emit("DeepSpeed", "ZeRO stage 3 offload enabled")


def test_progress_bars_only_on_a_terminal(clean_filters, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stderr", Tty())
    assert console.progress_bars()
    console.configure_console()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not console.progress_bars()
    console.configure_console()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TQDM_DISABLE"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"



def test_a_library_tqdm_bar_is_silent_without_a_terminal() -> None:
    """tqdm reads TQDM_* defaults when it is imported, so the entry point sets them before any library loads it."""
    import subprocess
    import sys

    code = ("import flows.cli, sys; assert 'tqdm' not in sys.modules; flows.cli.configure_console(); "
            "from tqdm import tqdm; print(tqdm(range(3)).disable)")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


def test_known_library_warnings_are_silenced_and_others_kept(clean_filters) -> None:
    import warnings

    noisy = [("\nI have left this message as the final dev message to help you transition.", DeprecationWarning),
             ("Using naive (slow) implementation.No module named 'awq_ext'", UserWarning),
             ("torch.quantize_per_tensor, torch.quantize_per_channel and other quantized tensor creation functions",
              UserWarning),
             ("\x1b[33mAdd type hints to the `predict` method to enable data validation\x1b[0m", UserWarning),
             ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning),
             ("\x1b[31mAn input example was not provided when logging the model.", UserWarning)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.configure_console()
        for message, category in noisy:
            warnings.warn(message, category, stacklevel=1)
        warnings.warn("Using a real deprecated argument", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["Using a real deprecated argument"]


def test_progress_line() -> None:
    line = progress_line("image_sft", 30, 120, 60.0, {"loss": 2.3104, "learning_rate": 1.9e-4,
                                                              "samples_per_s": 41.23, "epoch": 0.5})
    assert line == "image_sft step 30/120 (25%)  loss 2.31  lr 1.90e-04  samples/s 41.2  elapsed 1m00s eta 3m00s"
    assert "eta 4m00s" in progress_line("x", 60, 120, 60.0, {}, steps_done=15)  # resumed at step 45
