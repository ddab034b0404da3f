"""Point every service at a temporary folder before prefect / mlflow are imported; helpers for the tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_TMP = Path(tempfile.mkdtemp(prefix="nvila-orch-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

ENV = {
    "NVILA_PROJECT_DIR": str(_TMP / "project"),
    "PREFECT_HOME": str(_TMP / "prefect"),
    "PREFECT_LOCAL_STORAGE_PATH": str(_TMP / "prefect" / "storage"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "MLFLOW_TRACKING_URI": f"sqlite:///{_TMP / 'mlflow.db'}",
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(ENV)
os.environ.pop("PREFECT_API_URL", None)
(_TMP / "project").mkdir()
shutil.copy(REPO / "params.yaml", _TMP / "project" / "params.yaml")


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project folder (a copy of params.yaml) as the cwd, with its own MLflow store and Prefect results."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    monkeypatch.setenv("NVILA_PROJECT_DIR", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(root / ".prefect" / "storage"))
    return root


def _latest_artifact(key: str) -> str | None:
    """The newest Prefect artifact with `key` (its markdown), from the API of the running test harness."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read() -> str | None:
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                                sort=ArtifactSort.CREATED_DESC, limit=1)
            return str(found[0].data) if found else None

    return asyncio.run(read())


@pytest.fixture()
def latest_artifact():
    """`latest_artifact(key)`: the newest Prefect artifact with that key, or None (call inside the harness)."""
    return _latest_artifact


def _deep_merge(base: dict, extra: dict) -> dict:
    return {**base, **{k: _deep_merge(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in extra.items()}}


def _shrink_params(path: Path, extra: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(_deep_merge(yaml.safe_load(path.read_text()), extra), sort_keys=False))


@pytest.fixture()
def shrink_params():
    """`shrink_params(path, extra)`: deep-merge `extra` into the params file at `path` (smaller corpus, steps)."""
    return _shrink_params
