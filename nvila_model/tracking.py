"""The tracker interface the library logs through, and the do-nothing tracker used when nothing is tracking."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """What library code may call; `tasks/` supplies an MLflow implementation."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """Stands in for a real tracker so training loops have no logging branches."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


_CURRENT: list[Tracker] = [NullTracker()]


def set_tracker(tracker: Tracker) -> None:
    """Install the tracker stage commands log through (the `nvila` entry point does, when a run is tracked)."""
    _CURRENT[0] = tracker


def current_tracker() -> Tracker:
    """The tracker installed by the entry point, else the do-nothing one."""
    return _CURRENT[0]
