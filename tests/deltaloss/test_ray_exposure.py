"""A local Ray instance started for scoring listens on loopback only and leaves nothing in the system temp folder.

The listening sockets are read from the OS (psutil over /proc) while a real pool scores, for every process of the
Ray session: the driver and its descendants (GCS, raylet, monitor, runtime-env agent, workers).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import psutil
import pytest
from toy_models import BigramScorer, memorizer, uniform

from nvila_model.deltaloss.config import RayConfig
from nvila_model.deltaloss.ray_pool import score_records_ray
from nvila_model.deltaloss.scorer import ScorerPair, score_records_local

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(180)
# A name in each kind of process's command line; every kind must be seen listening, so the check is not vacuous.
KINDS = {"gcs": "gcs_server", "raylet": "/raylet", "monitor": "monitor.py", "runtime-env agent": "RuntimeEnvAgent",
         "scoring actor": "ScoringActor"}


def _pair() -> ScorerPair:
    return ScorerPair(small=functools.partial(BigramScorer, uniform(5), 0.3),
                      large=functools.partial(BigramScorer, memorizer(5, [0, 3, 1, 4, 2]), 0.3))


def _records(n: int) -> list[dict]:
    return [{"id": f"r{i:02d}", "subset": "ab"[i % 2], "tokens": [(i + j) % 5 for j in range(5)], "num_prompt": 1}
            for i in range(n)]


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _listeners(skip: set[int]) -> dict[tuple[str, int], str]:
    """(ip, port) -> command line, for every TCP/UDP listener of this process and its descendants but `skip` (those
    alive before the pool started: an earlier test's Ray instance may still be going down)."""
    me = psutil.Process()
    found = {}
    for proc in [me, *(p for p in me.children(recursive=True) if p.pid not in skip)]:
        try:
            conns = proc.net_connections(kind="inet")
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and not conn.raddr):
                found[(conn.laddr.ip, conn.laddr.port)] = "driver" if proc.pid == me.pid else cmdline
    return found


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


@pytest.fixture()
def short_tmpdir(monkeypatch):
    """A fresh, short system temp folder (TMPDIR for child processes, tempfile's for this one)."""
    path = tempfile.mkdtemp(prefix="t-", dir="/tmp")  # Ray's socket paths below it must fit 107 characters
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", path)
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", pythonpath)  # the workers import the toy scorers
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def _kinds_seen(seen: dict[tuple[str, int], set[str]]) -> set[str]:
    return {kind for kind, marker in {"driver": "driver", **KINDS}.items()
            if any(marker in c for cmds in seen.values() for c in cmds)}


def test_local_instance_listens_on_loopback_only_and_leaves_no_temp_files(tmp_path: Path, short_tmpdir: Path) -> None:
    # (tmp_path comes first, so the gate lies outside the temp folder that must end empty.)
    # Every batch waits at a gate the watcher opens once it has seen every kind of process listening (or after the
    # toy scorer's 60 s), so a loaded machine can not end the pool before a sample catches each kind.
    gate = tmp_path / "gate"
    records = [{**r, "gate": str(gate)} for r in _records(12)]
    # Every command line each listener was seen with: an exiting process reads as an empty one, and a sample taken
    # while an actor goes down must not erase what an earlier sample saw it as.
    seen: dict[tuple[str, int], set[str]] = {}
    temp_entries: set[str] = set()
    done = threading.Event()
    earlier = _descendants()
    open_before = set(_listeners(earlier))  # e.g. a server an earlier test left in this process

    def watch() -> None:  # sample the sockets while the pool is up
        while not done.wait(0.2):
            for k, cmd in _listeners(earlier).items():
                if k not in open_before:
                    seen.setdefault(k, set()).add(cmd)
            temp_entries.update(os.listdir(short_tmpdir))
            if len(_kinds_seen(seen)) == 1 + len(KINDS):
                gate.touch()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        rows, _ = score_records_ray(_pair(), records, batch_size=2, cfg=RayConfig(num_actors=2, num_cpus=2))
    finally:
        done.set()
        watcher.join()
    assert rows == score_records_local(_pair(), records, batch_size=2)
    missing = {"driver", *KINDS} - _kinds_seen(seen)
    assert not missing, f"no listener seen of: {sorted(missing)}; seen: {seen}"
    exposed = {f"{ip}:{port}": sorted(c[:100] for c in cmds) for (ip, port), cmds in seen.items()
               if not _is_loopback(ip)}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert temp_entries  # the session lived in TMPDIR
    assert os.listdir(short_tmpdir) == []  # and is gone


def test_a_configured_temp_dir_keeps_the_session(short_tmpdir: Path) -> None:
    temp_dir = short_tmpdir / "mine"
    rows, _ = score_records_ray(_pair(), _records(2), batch_size=2,
                                cfg=RayConfig(num_actors=1, num_cpus=1, temp_dir=str(temp_dir)))
    assert len(rows) == 2
    assert any(p.name.startswith("session_") for p in temp_dir.iterdir())
    assert sorted(os.listdir(short_tmpdir)) == ["mine"]


def test_a_failed_start_leaves_no_temp_files(short_tmpdir: Path, monkeypatch) -> None:
    from nvila_model.deltaloss import ray_pool

    def fail(cfg: RayConfig, temp_dir: str) -> None:
        assert Path(temp_dir).parent == short_tmpdir
        raise RuntimeError("start failed")

    monkeypatch.setattr(ray_pool, "_start_local", fail)
    with pytest.raises(RuntimeError, match="start failed"), ray_pool.connect(RayConfig()):
        pass
    assert os.listdir(short_tmpdir) == []


def test_a_temp_folder_too_long_for_rays_sockets_is_one_line(short_tmpdir: Path, monkeypatch) -> None:
    from nvila_model.deltaloss.ray_pool import session_temp_dir

    deep = short_tmpdir / ("d" * 40)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(ValueError, match="TMPDIR: .* characters Ray's socket paths allow"):
        session_temp_dir()
    assert os.listdir(deep) == []
    with pytest.raises(ValueError, match="absolute path of at most 43 characters"):
        RayConfig(temp_dir=str(deep / "ray"))
