"""`dvc repro` in a fresh clone: the cheap head of the pipeline runs, a second repro is a no-op, and
`dvc exp run -S <param>` re-runs only the stage that reads it (its upstream is skipped).

The whole chain under plain DVC (a keep-ratio experiment restoring pre-training and training the SFT stages on its
subset) is what `test_pipeline_e2e.py` asserts of the flow's runs, which are `dvc repro` of one stage at a time.

The clone holds the committed files plus the uncommitted working tree (what the next commit will hold).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET = os.environ.get("NVILA_TEST_DVC_TARGET", "validate")  # generate -> validate: the cheapest chain
CHANGED_PARAM = os.environ.get("NVILA_TEST_DVC_PARAM", "validate.max_reject_share=0.5")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _clone(dest: Path) -> Path:
    from tests.orchestration.conftest import clone_repo

    return clone_repo(dest)


def test_dvc_repro_in_fresh_clone(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(clone),
           "NVILA_PROJECT_DIR": str(clone), "DVC_NO_ANALYTICS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}

    first = _sh(["dvc", "repro", TARGET], clone, env)
    assert "Running stage 'generate'" in first and f"Running stage '{TARGET}'" in first
    assert (clone / "dvc.lock").is_file() and (clone / ".dvc_site_cache").is_dir()

    second = _sh(["dvc", "repro", TARGET], clone, env)
    assert "Running stage" not in second, second
    assert "up to date" in _sh(["dvc", "status", TARGET], clone, env)

    changed = _sh(["dvc", "exp", "run", "-S", CHANGED_PARAM, TARGET], clone, env)
    assert f"Running stage '{TARGET}'" in changed, changed
    if TARGET != "generate":
        assert "Running stage 'generate'" not in changed, changed

    _sh(["dvc", "push", TARGET], clone, env)  # the default remote is local: push works offline
    assert any((clone / ".dvc_remote").rglob("*")), "nothing pushed to the local remote"

