"""A stage that fails under the flow's `dvc repro` says why: DVC's own refusal (a listed param missing from
params.yaml) and a command's one-line error with its exit status (2: a bad input) reach the `StageFailed`, on a
scratch DVC project (the flow's `run_dvc` with a list in place of the Prefect task's logger). A stage that succeeds
logs its lines without DVC's advice to git-add and push what the run saves itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.dvc_stages import StageFailed
from tasks.workspace import Workspace

DVC_YAML = """stages:
  needs_param:
    cmd: python ok.py
    params: [a.b]
  bad_input:
    cmd: python bad.py
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text("a: {c: 1}\n")
    (tmp_path / "ok.py").write_text("print('ran')\n")
    (tmp_path / "bad.py").write_text("import sys\nprint('nvila: error: data/x.jsonl: not a manifest', file=sys.stderr)"
                                     "\nsys.exit(2)\n")
    return tmp_path


def test_dvcs_refusal_and_the_commands_error_and_exit_status_reach_the_failure(project: Path, monkeypatch) -> None:
    from tasks import stage_task

    logged: list[str] = []
    logger = SimpleNamespace(info=lambda fmt, *args: logged.append(fmt % args))
    monkeypatch.setattr(stage_task, "get_run_logger", lambda: logger)
    ws = Workspace(project=project, root=project, name="scratch")
    with pytest.raises(StageFailed, match=r"stage needs_param failed:\n.*Parameters 'a\.b' are missing from "
                                          r"'params\.yaml'") as refused:
        stage_task.run_dvc("needs_param", ws, {})
    assert refused.value.exit_code is None, "the command never ran"
    with pytest.raises(StageFailed) as failed:
        stage_task.run_dvc("bad_input", ws, {})
    assert (str(failed.value), failed.value.exit_code) == ("stage bad_input: data/x.jsonl: not a manifest", 2)
    (project / "params.yaml").write_text("a: {b: 1}\n")
    logged.clear()
    stage_task.run_dvc("needs_param", ws, {})
    assert "needs_param" in (project / "dvc.lock").read_text()
    # The stage's own lines reach the log; DVC's advice to git-add dvc.lock and push (the run does both) does not.
    assert "Running stage 'needs_param':" in logged and "ran" in logged, logged
    assert not [m for m in logged if "git add" in m or "autostage" in m or "dvc push" in m], logged
