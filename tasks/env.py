"""Process environment for the orchestration layer: project-local Prefect, MLflow, DVC and Ray state.

`configure()` must run before `prefect` is imported (`tasks` and `flows` call it on import). It only fills
variables that are unset, so a shell, a CI job or a test can point any service elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ENV = "NVILA_PROJECT_DIR"
# The CPU threads a stage command's torch may use: a pipeline run splits the cores between the stages it runs at once.
THREADS_ENV = "NVILA_NUM_THREADS"


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, as a container or `taskset` limits it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def project_dir() -> Path:
    """The project root: `$NVILA_PROJECT_DIR`, else the nearest folder at or above the cwd holding params.yaml."""
    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return cwd


def mlflow_uri(root: Path | None = None) -> str:
    """The embedded MLflow store: a SQLite file in the project."""
    return f"sqlite:///{(root or project_dir()) / 'mlflow.db'}"


def defaults(root: Path) -> dict[str, str]:
    """Environment defaults for a project rooted at `root` (all paths inside it, nothing bound beyond 127.0.0.1)."""
    prefect_home = root / ".prefect"
    return {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_LOCAL_STORAGE_PATH": str(prefect_home / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # a loaded 2-core machine needs more than 20 s
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "nvila_model",  # library logs show up in the Prefect UI
        "MLFLOW_TRACKING_URI": mlflow_uri(root),
        "RAY_USAGE_STATS_ENABLED": "0",
        "TORCH_EXTENSIONS_DIR": str(root / ".torch_extensions"),
        "TOKENIZERS_PARALLELISM": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }


def configure(root: str | Path | None = None) -> Path:
    """Fill unset service variables with project-local defaults; returns the project root."""
    root = Path(root).resolve() if root else project_dir()
    for key, value in defaults(root).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault(PROJECT_ENV, str(root))
    return root
