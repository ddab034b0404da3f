"""Scoring joins a running Ray cluster named by RAY_ADDRESS instead of starting its own.

The cluster is a real head node (`ray start --head --block` on 127.0.0.1) in a separate process, as a user's
cluster would be; the driver's actors must land on it and give the loop's scores.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from toy_models import BigramScorer, memorizer, uniform

from nvila_model.deltaloss.scorer import ScorerPair, score_records_local

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def ray_head():
    """A token-authenticated head node on 127.0.0.1 whose workers can import the toy scorers; yields the
    environment a driver joins it with (RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-j-", dir="/tmp")  # Ray's socket paths must fit 107 characters
    token = secrets.token_hex(16)  # Ray's token auth: the head and every driver share this secret
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp_dir}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # the GCS port accepts connections once the head is up
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                head.kill()
                pytest.fail(f"ray head did not start: {head.stdout.read().decode()[-2000:]}")
            time.sleep(0.5)
    yield {**env, "RAY_ADDRESS": address}
    os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops its node's processes when it is terminated
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)


DRIVER = """
import functools, json
import ray
from toy_models import BigramScorer, memorizer, uniform
from nvila_model.deltaloss.config import RayConfig
from nvila_model.deltaloss.ray_pool import connect, score_records_ray
from nvila_model.deltaloss.scorer import ScorerPair

pair = ScorerPair(small=functools.partial(BigramScorer, uniform(5), 0.0),
                  large=functools.partial(BigramScorer, memorizer(5, [0, 3, 1, 4, 2]), 0.0))
records = json.loads(input())
cfg = RayConfig(num_actors=2, cpus_per_actor=1)
with connect(cfg) as joined:
    info = {"joined": joined, "gcs": ray.get_runtime_context().gcs_address, "cpus": ray.cluster_resources().get("CPU")}
    rows, stats = score_records_ray(pair, records, batch_size=4, cfg=cfg)
print("RESULT " + json.dumps({**info, "rows": rows, "batches": stats.num_batches, "actors": stats.num_actors_started}))
"""


def test_scoring_joins_the_cluster_in_ray_address(ray_head: dict[str, str]) -> None:
    """A driver process with RAY_ADDRESS (and the cluster's token) scores on that cluster: same rows as the loop."""
    pair = ScorerPair(small=functools.partial(BigramScorer, uniform(5), 0.0),
                      large=functools.partial(BigramScorer, memorizer(5, [0, 3, 1, 4, 2]), 0.0))
    records = [{"id": f"r{i:02d}", "subset": "ab"[i % 2], "tokens": [(i + j) % 5 for j in range(5)],
                "num_prompt": 1} for i in range(12)]
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(records) + "\n", env=ray_head,
                          capture_output=True, text=True, timeout=240)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result, proc.stderr[-3000:]
    got = json.loads(result[0][len("RESULT "):])
    assert got["joined"] is True and got["gcs"].endswith(":" + ray_head["RAY_ADDRESS"].split(":")[1])
    assert got["cpus"] == 2.0  # the head's CPUs (--num-cpus=2), not a fresh local instance
    assert got["batches"] == 3 and got["actors"] == 2
    assert got["rows"] == json.loads(json.dumps(score_records_local(pair, records, batch_size=4)))
