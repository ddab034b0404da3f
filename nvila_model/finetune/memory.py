"""Peak memory of a block of work: CUDA allocator peak on a GPU, sampled process RSS on CPU."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil
import torch


class PeakMemory:
    """`with PeakMemory() as pm: ...` then `pm.peak_bytes` (above the start) and `pm.kind`."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.kind = "cuda_max_allocated" if torch.cuda.is_available() else "cpu_rss_sampled"
        self.start_bytes = 0
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_rss = 0

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self._max_rss = max(self._max_rss, process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.kind.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
        else:
            self.start_bytes = self._max_rss = psutil.Process().memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.kind.startswith("cuda"):
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.start_bytes
            return
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._max_rss = max(self._max_rss, psutil.Process().memory_info().rss)
        self.peak_bytes = self._max_rss - self.start_bytes


def model_state_bytes(model: torch.nn.Module) -> int:
    """Weights as stored (packed 4-bit bytes for a bitsandbytes LLM, fp32 elsewhere) plus a gradient and two AdamW
    moments per trainable parameter, in bytes (activations excluded)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + sum(3 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
