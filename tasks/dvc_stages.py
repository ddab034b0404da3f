"""The pipeline's stages as DVC defines them: their order, what a selection needs, and what a run recorded.

`dvc.yaml` is the only definition of the stages; this module reads it through DVC's own API (templating and all),
so the Prefect flow can never disagree with `dvc repro`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import yaml


class StageFailed(RuntimeError):
    """A stage command failed; `exit_code` is the command's own exit status (2: a bad input or setting, named in
    the message; 75: a transient I/O error, worth a retry)."""

    def __init__(self, message: str, exit_code: int | None):
        super().__init__(message)
        self.exit_code = exit_code


@functools.lru_cache(maxsize=32)
def _read_stages(root: str, definition: str) -> tuple[tuple[str, ...], dict[str, frozenset[str]],
                                                         dict[str, tuple[Path, ...]]]:
    """(stage names as declared, {stage: stages it depends on}, {stage: its outputs}) as DVC reads them at `root`.

    Building DVC's index takes most of a second; a run asks for it before and after every stage, so the answer is
    kept per `definition` (the digest of what DVC reads it from, see `_definition`).
    """
    from dvc.repo import Repo

    with Repo(root) as repo:
        graph = repo.index.graph  # an edge goes from a stage to a stage it depends on
        stages = list(repo.index.stages)
        needs = {stage.name: frozenset(dep.name for dep in graph.successors(stage)) for stage in graph.nodes}
        outs = {stage.name: tuple(Path(out.fs_path) for out in stage.outs) for stage in stages}
    return tuple(stage.name for stage in stages), needs, outs


def _definition(root: Path) -> str:
    """A digest of the files DVC reads the stages from: `dvc.yaml` and the params file its templating reads."""
    digest = hashlib.sha256()
    for name in ("dvc.yaml", "params.yaml"):
        path = root / name
        digest.update(path.read_bytes() if path.is_file() else b"\0missing")
    return digest.hexdigest()


def _stages(root: Path) -> tuple[tuple[str, ...], dict[str, frozenset[str]], dict[str, tuple[Path, ...]]]:
    return _read_stages(str(Path(root).resolve()), _definition(root))


def stage_graph(root: Path) -> tuple[list[str], dict[str, set[str]]]:
    """(every stage in dependency order, {stage: the stages it depends on directly}) of the project at `root`.

    Stages that do not depend on each other keep their order in dvc.yaml.
    """
    import networkx as nx

    declared, needs, _ = _stages(root)
    dag = nx.DiGraph()
    dag.add_nodes_from(declared)
    dag.add_edges_from((dep, stage) for stage, deps in needs.items() for dep in deps)
    order = list(nx.lexicographical_topological_sort(dag, key=declared.index))
    return order, {stage: set(deps) for stage, deps in needs.items()}


def plan(root: Path, targets: list[str] | None) -> list[str]:
    """The stages a run of `targets` executes, in order: the targets and everything upstream of them (upstream
    stages whose inputs are unchanged are restored from the cache, not recomputed). None: every stage."""
    order, needs = stage_graph(root)
    if targets is None:
        return order
    unknown = sorted(set(targets) - set(order))
    if unknown:
        raise ValueError(f"stages: {unknown} are not stages of dvc.yaml; choose from {order}")
    wanted: set[str] = set()
    todo = list(targets)
    while todo:
        stage = todo.pop()
        if stage not in wanted:
            wanted.add(stage)
            todo.extend(needs[stage])
    return [stage for stage in order if stage in wanted]


def lock_entry(root: Path, stage: str) -> dict[str, Any]:
    """What `dvc.lock` recorded for `stage` in the workspace at `root` (cmd, params, deps, outs); {} if nothing."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {})


def outs_digest(entry: dict[str, Any]) -> str:
    """The stage's outputs as `path:md5` pairs (sorted): what the stage produced, whoever computed it."""
    return ",".join(sorted(f"{o['path']}:{o.get('md5', '')}" for o in entry.get("outs", [])))


def lock_params(entry: dict[str, Any]) -> dict[str, Any]:
    """The params a stage read, as recorded in `dvc.lock` ({key: value})."""
    out: dict[str, Any] = {}
    for values in (entry.get("params") or {}).values():
        out.update(values)
    return out


def out_paths(root: Path, stage: str) -> list[Path]:
    """The outputs (and metrics) `dvc.yaml` declares for `stage`, resolved in the workspace at `root`."""
    _, _, outs = _stages(root)
    if stage not in outs:
        raise ValueError(f"{stage!r} is not a stage of {Path(root) / 'dvc.yaml'}")
    return list(outs[stage])


def output_dir(root: Path, stage: str) -> Path:
    """The folder holding a stage's output: its one output folder, or the common folder of its output files."""
    paths = out_paths(root, stage)
    return paths[0] if len(paths) == 1 else Path(os.path.commonpath(paths))
