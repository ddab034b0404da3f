"""An isolated DVC workspace per pipeline run: a git worktree sharing the project's DVC cache and remotes.

Why a worktree: DVC's experiments, run-cache and remote are what version and reproduce the pipeline, and its own
`dvc exp run --temp` runs the whole pipeline as one opaque command. A git worktree gives each run a private copy of
the code and `params.yaml` (with the run's parameters written in, as `dvc exp run -S` does) in which every stage
runs as its own `dvc repro --single-item`, so Prefect shows one task per stage, while the DVC cache, run-cache,
remote and experiment refs are shared with the project: a stage whose command, params, code and inputs are unchanged
is restored from the cache, and the finished run is saved as a DVC experiment that `dvc exp show/apply` sees in the
project. Two runs at once never touch each other's files; the few operations on the shared git repository (adding
and removing worktrees, saving and applying experiments) take a lock.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)
STATE = ".nvila"  # project-local state: workspaces, resumable checkpoints, locks (git-ignored)
PARAMS = "params.yaml"


def repo_lock(project: Path) -> FileLock:
    """The lock of operations on the project's shared git repository and workspace."""
    (project / STATE).mkdir(exist_ok=True)
    return FileLock(str(project / STATE / "repo.lock"))


def git(args: list[str], cwd: Path) -> str:
    """Run git; a failure is a RuntimeError with git's message."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def dvc(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the DVC command line of this interpreter's environment; a failure is a RuntimeError with its output."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {cwd}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def valid_name(name: str, strict: bool = False) -> str:
    """A git ref / DVC experiment name from a free-form run name (`strict`: letters, digits, `_` and `-` only, as
    dvc.yaml `foreach` keys in paths and stage names)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+" if strict else r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return cleaned[:80]


@dataclass(frozen=True)
class Workspace:
    """One run's private checkout (`root`) of the `project`, named like its DVC experiment."""

    project: Path
    root: Path
    name: str
    default_remote: str | None = None  # where a finished run's outputs are pushed (none: not pushed)
    launch: tuple[tuple[str, str], ...] = ()  # variables that send the stage commands to a warm server (tasks/warm.py)

    @property
    def params(self) -> Path:
        return self.root / PARAMS

    def env(self) -> dict[str, str]:
        """Environment of the stage commands: this workspace's code first on the import path, resumable
        checkpoints in the project (so a re-run resumes an interrupted stage), the interpreter's tools on PATH."""
        bin_dir = str(Path(sys.executable).parent)
        return {"PYTHONPATH": str(self.root), "NVILA_WORK_DIR": str(self.project / STATE / "work"),
                "NVILA_PROJECT_DIR": str(self.project), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                **dict(self.launch)}


def check_writable(project: Path, paths: list[Path]) -> None:
    """Before a run starts: every folder and file it writes (the project's state, DVC cache, the given `paths`, such
    as the MLflow database) must be writable; otherwise one `ValueError` naming the path."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        cache = Path(repo.cache.local_cache_dir)
    for path in [project, project / STATE, cache, *paths]:
        target = path if path.exists() else path.parent
        if target.exists() and not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            raise ValueError(f"{path}: not writable (a pipeline run writes there); fix its permissions")


def uncommitted(project: Path) -> tuple[list[str], list[str]]:
    """(changed or new files that git does not ignore, deleted files) of the project's working tree."""
    changed = git(["ls-files", "-z", "-m", "-o", "--exclude-standard"], project).split("\0")
    deleted = git(["ls-files", "-z", "-d"], project).split("\0")
    return sorted({p for p in changed if p and (project / p).is_file()}), sorted(p for p in deleted if p)


def shared_dvc_config(project: Path) -> dict[str, Any]:
    """The project's DVC cache folder and its local remotes' absolute URLs (a worktree's relative paths would
    point inside the worktree)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        remotes = {name: conf["url"] for name, conf in repo.config["remote"].items()
                   if "://" not in str(conf.get("url", ""))}
        return {"cache_dir": str(repo.cache.local_cache_dir), "remotes": remotes,
                "default_remote": repo.config["core"].get("remote")}


def open_workspace(project: Path, name: str) -> Workspace:
    """Create the run's worktree at the project's HEAD plus its uncommitted changes, wired to the shared cache."""
    project = project.resolve()
    root = project / STATE / "workspaces" / name
    with repo_lock(project):
        if root.exists():
            raise ValueError(f"{root}: a workspace of this name exists (another run with the same name is running)")
        git(["worktree", "prune"], project)
        git(["worktree", "add", "--detach", "--quiet", str(root), "HEAD"], project)
    changed, deleted = uncommitted(project)
    for rel in changed:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / rel, root / rel)
    for rel in deleted:
        (root / rel).unlink(missing_ok=True)
    shared = shared_dvc_config(project)
    lines = ["[cache]", f"    dir = {shared['cache_dir']}"]
    for remote, url in shared["remotes"].items():
        lines += [f"['remote \"{remote}\"']", f"    url = {url}"]
    (root / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")
    return Workspace(project, root, name, shared["default_remote"])


def close_workspace(ws: Workspace) -> None:
    """Remove the run's worktree (its outputs are in the DVC cache and its experiment)."""
    with repo_lock(ws.project):
        try:
            git(["worktree", "remove", "--force", str(ws.root)], ws.project)
        except RuntimeError as exc:
            log.warning("%s", exc)
            shutil.rmtree(ws.root, ignore_errors=True)
            git(["worktree", "prune"], ws.project)


@contextmanager
def workspace(project: Path, name: str) -> Iterator[Workspace]:
    """`open_workspace` ... `close_workspace`, also when the run fails or is interrupted."""
    ws = open_workspace(project, name)
    try:
        yield ws
    finally:
        close_workspace(ws)


def set_params(path: Path, overrides: dict[str, Any]) -> None:
    """Write `{"prune.keep_ratio": 0.5, ...}` into the params file, as `dvc exp run -S` does (comments kept)."""
    from dvc.utils.serialize import modify_yaml

    from nvila_model.params import assign

    with modify_yaml(str(path)) as data:
        for dotted, value in overrides.items():
            assign(data, dotted, value)


def save_experiment(ws: Workspace, stages: list[str], push: bool = True) -> str:
    """Commit the run of `stages` as a DVC experiment named after the workspace (params, dvc.lock, metrics); push
    their outputs to the default remote, if the project has one. Returns the experiment name."""
    from tasks.dvc_stages import stage_graph

    # DVC commits each named stage on its own, rewriting dvc.lock every time (about a second each); a run of every
    # stage names none, and DVC commits them all with one write. So does `dvc push`.
    targets = [] if set(stages) == set(stage_graph(ws.root)[0]) else list(stages)
    git(["add", "-A"], ws.root)
    with repo_lock(ws.project):
        names = set(dvc(["exp", "ls", "--name-only", "--all-commits"], ws.project).split())
        name = ws.name if ws.name not in names else next(
            f"{ws.name}-{i}" for i in range(2, 1000) if f"{ws.name}-{i}" not in names)
        dvc(["exp", "save", "--name", name, *targets], ws.root, ws.env())
    if push and ws.default_remote:
        dvc(["push", *targets], ws.root, ws.env())  # not --quiet: it hides DVC's error, the failure's one line
    return name


def apply_experiment(project: Path, name: str) -> None:
    """Bring a saved experiment into the project's working tree: its params, dvc.lock and outputs."""
    with repo_lock(project):
        dvc(["exp", "apply", name], project)
