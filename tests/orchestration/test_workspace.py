"""A run's workspace: a git worktree with the project's uncommitted changes, sharing the DVC cache; its result is a
DVC experiment the project sees, that `dvc exp apply` brings in, and that a later run restores from the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.workspace import apply_experiment, dvc, open_workspace, save_experiment, set_params, workspace

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _sh(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout + proc.stderr


@pytest.fixture()
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC project with a two-stage pipeline whose first stage counts its own runs."""
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "toy"
    root.mkdir()
    _sh(["git", "init", "-q"], root)
    dvc(["init", "-q"], root)
    dvc(["remote", "add", "-d", "local", ".dvc_remote"], root)  # stored relative to .dvc/, as the project's
    (root / ".gitignore").write_text("/out/\n/runs.log\n.nvila/\n/.dvc_remote/\n")
    (root / ".dvcignore").write_text(".nvila/\n")
    (root / "params.yaml").write_text("# the settings\na:\n  x: 1  # first\nb:\n  y: 2\n")
    (root / "src.txt").write_text("the first stage's code\n")
    python = sys.executable
    stages = {"stages": {
        "first": {"cmd": f"{python} -c \"import pathlib, yaml; p = yaml.safe_load(open('params.yaml')); "
                         "pathlib.Path('out').mkdir(exist_ok=True); pathlib.Path('out/a.txt').write_text(str(p['a']));"
                         "open('../../../runs.log', 'a').write('first\\\\n')\"",
                  "params": ["a"], "deps": ["src.txt"], "outs": ["out/a.txt"]},
        "second": {"cmd": "cat out/a.txt > out/b.txt && echo '{\"m\": ${b.y}}' > out/m.json",
                   "params": ["b"], "deps": ["out/a.txt"], "outs": ["out/b.txt"], "metrics": ["out/m.json"]}}}
    (root / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    _sh(["git", "add", "-A"], root)
    _sh(["git", "commit", "-qm", "toy"], root)
    return root


def _repro(ws, stage: str) -> str:
    return dvc(["repro", "--single-item", stage], ws.root, ws.env())


def test_run_in_a_workspace_becomes_an_experiment_of_the_project(toy: Path) -> None:
    (toy / "params.yaml").write_text((toy / "params.yaml").read_text().replace("y: 2", "y: 3"))  # uncommitted
    (toy / "notes.txt").write_text("new file")
    with workspace(toy, "run-one") as ws:
        assert (ws.root / "notes.txt").read_text() == "new file"  # the project's working tree, not only HEAD
        set_params(ws.params, {"a.x": 5})
        text = ws.params.read_text()
        assert "# first" in text and "x: 5" in text and "y: 3" in text  # written as `dvc exp run -S`, comments kept
        assert "Running stage 'first'" in _repro(ws, "first")
        assert "Running stage 'second'" in _repro(ws, "second")
        assert save_experiment(ws, ["first", "second"]) == "run-one"
        root = ws.root
    assert not root.exists(), "the workspace is removed after the run"
    assert not (toy / "out").exists() and (toy / "params.yaml").read_text().count("x: 1"), "project untouched"
    shown = dvc(["exp", "show", "--json"], toy)
    assert '"run-one"' in shown and '"m": 3' in shown
    assert any(p.is_file() for p in (toy / ".dvc_remote").rglob("*")), "outputs pushed to the project's remote"
    apply_experiment(toy, "run-one")
    assert (toy / "out" / "b.txt").read_text().strip() == "{'x': 5}"
    assert "up to date" in dvc(["status"], toy)


def test_unchanged_stage_is_restored_from_the_shared_cache(toy: Path) -> None:
    for name, y in (("one", 2), ("two", 7)):
        with workspace(toy, name) as ws:
            set_params(ws.params, {"b.y": y})
            first = _repro(ws, "first")
            _repro(ws, "second")
            save_experiment(ws, ["first", "second"], push=False)
    assert "is cached - skipping run" in first, "the second run restores `first` (same params and inputs)"
    assert (toy / "runs.log").read_text().count("first") == 1, "its command ran once"


def test_experiment_names_never_collide_and_workspaces_do_not_overlap(toy: Path) -> None:
    names = []
    for _ in range(2):
        with workspace(toy, "same") as ws:
            _repro(ws, "first")
            names.append(save_experiment(ws, ["first"], push=False))  # a partial run
    assert names == ["same", "same-2"]
    ws = open_workspace(toy, "busy")
    with pytest.raises(ValueError, match="a workspace of this name exists"):
        open_workspace(toy, "busy")
    assert ws.root.is_dir()
