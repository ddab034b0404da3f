"""Device selection: one `device` setting (auto | cpu | cuda | cuda:N) for every stage that runs a model."""

from __future__ import annotations

import torch

from nvila_model.params import device_name


def check_device_setting(requested: str, setting: str = "device") -> None:
    """A one-line `ValueError` naming `setting` unless `requested` is auto, cpu, cuda or cuda:N (no hardware check)."""
    try:
        device_name(requested)
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None


def resolve_device(requested: str | torch.device, setting: str = "device") -> torch.device:
    """The device `requested` means here: auto is cuda when a GPU is visible, else cpu. Asking for a GPU this host
    does not have is a one-line `ValueError` naming `setting` (never a silent fallback to the CPU)."""
    if isinstance(requested, torch.device):
        requested = str(requested)
    check_device_setting(requested, setting)
    name = str(requested).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{setting} is {requested!r} but this host has no CUDA GPU (torch {torch.__version__}); "
                             "use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{setting} is {requested!r} but this host has {torch.cuda.device_count()} CUDA GPU(s)")
    return device
