"""Point every service at a temporary folder before prefect / mlflow are imported; helpers for the tests."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
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
    "MLFLOW_TRACKING_URI": f"sqlite:///{_TMP / 'mlflow.db'}",
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(ENV)
os.environ.pop("PREFECT_API_URL", None)
(_TMP / "project").mkdir()
shutil.copy(REPO / "params.yaml", _TMP / "project" / "params.yaml")


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
# The pipeline shrunk to minutes: a fifth of the corpus, a few steps per stage, a few eval samples.
SHRINK = {
    "generate": {"scale": 0.1},
    "score": {"bootstrap": {"small_steps": 2, "large_steps": 2, "share": 0.05}},
    **{stage: {"max_steps": 6, "logging_steps": 3, "save_steps": 3} for stage in
       ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")},
    "eval": {"limit_per_subset": 2, "efficiency_samples": 1},
    "finetune": {"max_steps": 2},
    "quantize": {"vision": {"num_calib_samples": 4}, "llm": {"num_calib_samples": 8}},
}


def clone_repo(dest: Path) -> Path:
    """A git clone of this repository plus its uncommitted working tree (what the next commit will hold)."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    listed = subprocess.run(["git", "ls-files", "-m", "-o", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    for rel in listed:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    deleted = subprocess.run(["git", "ls-files", "-d"], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.split()
    for rel in deleted:
        (dest / rel).unlink(missing_ok=True)
    return dest


def git_project(root: Path, extra: dict | None = None) -> Path:
    """A committed clone of the project with the shrunk params (and `extra`), ready for pipeline runs."""
    clone_repo(root)
    _shrink_params(root / "params.yaml", _deep_merge(SHRINK, extra or {}))
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "shrunk pipeline for a test"], cwd=root, check=True, env=env)
    return root


def point_env_at(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make `root` this process's project: its MLflow store, and git identity for DVC's experiment commits."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("NVILA_PROJECT_DIR", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


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


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (a temporary database) for the session's in-process flow runs: starting one takes
    about 20 s on 2 cores, and each run only reads back what it wrote itself (its own flow run, the newest
    artifact it made)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture()
def latest_artifact():
    """`latest_artifact(key)`: the newest Prefect artifact with that key, or None (call inside the harness)."""
    return _latest_artifact


def _deep_merge(base: dict, extra: dict) -> dict:
    return {**base, **{k: _deep_merge(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in extra.items()}}


def _shrink_params(path: Path, extra: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(_deep_merge(yaml.safe_load(path.read_text()), extra), sort_keys=False))

