"""Ray scoring: an ActorPool of actors that each load both scorers once; dead actors are replaced, batches re-scored.

Fault tolerance has two layers, both Ray's own mechanisms:
1. Actors are created with `max_restarts` (and unlimited task retries while restarts last): Ray restarts a dead
   actor process (re-running its constructor, which reloads both scorers) and re-runs the batch it was scoring.
2. When an actor is gone for good (restarts exhausted), the `ActorPool` drops it; the driver pushes a fresh actor
   into the pool and, after the round, re-submits every batch that has no result, up to `max_rounds` rounds.
Results are keyed by batch index, so the output has exactly one row per input record (checked before returning).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import ray
from ray.util.actor_pool import ActorPool

from nvila_model.deltaloss.config import MAX_TEMP_DIR_CHARS, RayConfig
from nvila_model.deltaloss.scorer import ScorerPair, check_ids, make_batches, score_batch

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PoolStats:
    """What happened during a pooled run (for logs, tracking and tests)."""

    num_batches: int = 0
    num_actors_started: int = 0
    num_actors_died: int = 0  # deaths the driver saw after Ray's own restarts were exhausted
    num_rounds: int = 0


class ScoringActor:
    """Holds both scorers for its lifetime and scores `(batch_index, records)` items."""

    def __init__(self, pair: ScorerPair, num_threads: int | None = None) -> None:
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.small, self.large = pair.build()

    def score(self, item: tuple[int, list[dict[str, Any]]]) -> tuple[int, list[dict[str, Any]]]:
        """Score one batch; returns its index with one row per record."""
        index, records = item
        return index, score_batch(self.small, self.large, records)

    def pid(self) -> int:
        """The worker process id (tests use it to kill an actor)."""
        return os.getpid()


@contextlib.contextmanager
def connect(cfg: RayConfig) -> Iterator[bool]:
    """Make sure Ray is up: reuse a running driver connection, join `address` / RAY_ADDRESS, or start locally.

    Yields True when this call started (or joined) Ray; on exit it then shuts Ray down and removes the session
    folder it created. A local instance listens on loopback only; a cluster's addresses are its own.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        yield False
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    own_temp_dir = None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            own_temp_dir = None if cfg.temp_dir else session_temp_dir()
            _start_local(cfg, cfg.temp_dir or own_temp_dir)
        yield True
    finally:
        ray.shutdown()
        if own_temp_dir:
            shutil.rmtree(own_temp_dir, ignore_errors=True)


def session_temp_dir() -> str:
    """A fresh private folder in the system temp dir for one local instance's session (removed after shutdown)."""
    path = tempfile.mkdtemp(prefix="ray-")
    if len(path) > MAX_TEMP_DIR_CHARS:
        shutil.rmtree(path)
        raise ValueError(f"TMPDIR: {path} is longer than the {MAX_TEMP_DIR_CHARS} characters Ray's socket paths "
                         "allow; set TMPDIR or score.ray.temp_dir to a shorter absolute path")
    return path


def _start_local(cfg: RayConfig, temp_dir: str) -> None:
    """Start a local instance whose every listener binds loopback.

    Ray picks each server's bind address from the node IP: the GCS, raylet and worker gRPC servers listen on
    127.0.0.1 only when the node IP is 127.0.0.1 (else on all addresses), the runtime-env agent binds the node IP,
    and the autoscaler monitor's metrics server binds loopback only for a loopback head. But `ray.init` and
    `ray start` turn a loopback `node_ip_address` into the machine's external IP (services.resolve_ip_for_localhost);
    only Ray's single-machine mode (ray_constants.ENABLE_RAY_CLUSTER false, what RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    sets when Ray is imported, the default on macOS and Windows) keeps the node IP on loopback. No ray.init argument
    selects it, so it is switched on here for the start of this instance only (a cluster join is left alone).
    """
    constants = ray._private.ray_constants
    saved = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                 log_to_driver=False)
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:  # the caller shuts this instance down
        raise RuntimeError(f"score: the local Ray instance took node IP {node_ip}, not loopback; this Ray version "
                           "no longer honours ray_constants.ENABLE_RAY_CLUSTER (see ray_pool._start_local)")


def _start_actor(pair: ScorerPair, cfg: RayConfig) -> ray.actor.ActorHandle:
    actor_cls = ray.remote(ScoringActor).options(
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor,
        max_restarts=cfg.max_restarts,
        max_task_retries=-1 if cfg.max_restarts != 0 else 0,
    )
    return actor_cls.remote(pair, max(1, int(cfg.cpus_per_actor)))


def _run_round(
    pool: ActorPool, items: list[tuple[int, list[dict[str, Any]]]], results: dict[int, list[dict[str, Any]]],
    pair: ScorerPair, cfg: RayConfig, stats: PoolStats, actors: list[ray.actor.ActorHandle],
) -> None:
    """Submit `items`, collect results as they finish; a dead actor is replaced by a fresh one in the pool."""
    for item in items:
        pool.submit(lambda actor, value: actor.score.remote(value), item)
    while pool.has_next():
        try:
            index, rows = pool.get_next_unordered()
        except ray.exceptions.ActorDiedError as exc:
            stats.num_actors_died += 1
            if stats.num_actors_died > cfg.num_actors * cfg.max_rounds:
                raise RuntimeError(f"score: {stats.num_actors_died} scoring actors died; last error: {exc}") from exc
            log.warning("scoring actor died (%s); starting a replacement", type(exc).__name__)
            replacement = _start_actor(pair, cfg)
            stats.num_actors_started += 1
            actors.append(replacement)
            pool.push(replacement)
            continue
        assert index not in results, f"batch {index} scored twice"
        results[index] = rows


def _score_rounds(
    pair: ScorerPair, batches: list[list[dict[str, Any]]], cfg: RayConfig, stats: PoolStats,
    actors: list[ray.actor.ActorHandle], results: dict[int, list[dict[str, Any]]],
) -> None:
    """Wait for every actor to load, then score the batches without a result, up to `max_rounds` rounds."""
    ray.get([actor.pid.remote() for actor in actors])  # both scorers loaded: a bad checkpoint fails here
    pool = ActorPool(list(actors))
    for _ in range(cfg.max_rounds):
        missing = [(i, b) for i, b in enumerate(batches) if i not in results]
        if not missing:
            break
        stats.num_rounds += 1
        _run_round(pool, missing, results, pair, cfg, stats, actors)


def score_records_ray(
    pair: ScorerPair, records: Sequence[dict[str, Any]], batch_size: int, cfg: RayConfig
) -> tuple[list[dict[str, Any]], PoolStats]:
    """Score `records` on a pool of `cfg.num_actors` actors; exactly one row per record, in input order."""
    if cfg.num_actors < 1:
        raise ValueError("score.ray.num_actors must be >= 1 for Ray scoring (0 means the in-process loop)")
    ids = check_ids(records, "score")
    batches = make_batches(records, batch_size)
    stats = PoolStats(num_batches=len(batches))
    results: dict[int, list[dict[str, Any]]] = {}
    with connect(cfg):
        actors = [_start_actor(pair, cfg) for _ in range(min(cfg.num_actors, max(1, len(batches))))]
        stats.num_actors_started = len(actors)
        try:
            _score_rounds(pair, batches, cfg, stats, actors, results)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
    missing = [i for i in range(len(batches)) if i not in results]
    if missing:
        raise RuntimeError(f"score: {len(missing)} batches still unscored after {cfg.max_rounds} rounds")
    rows = [row for i in range(len(batches)) for row in results[i]]
    assert [r["id"] for r in rows] == ids, "scored ids differ from the input ids"
    return rows, stats
