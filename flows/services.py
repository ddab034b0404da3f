"""Local services for `nvila ui` and the tests: a Prefect server and an MLflow UI server, bound to 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """The console script `name` next to this interpreter (the project venv), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def prefect_env(port: int, home: str | Path | None = None) -> dict[str, str]:
    """Environment pointing Prefect clients and the server at 127.0.0.1:`port` (SQLite under PREFECT_HOME)."""
    home = Path(home or os.environ["PREFECT_HOME"])
    api = f"http://{HOST}:{port}/api"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    }


def wait_http(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers 200; raise if it does not in time or `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} came up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up within {timeout:.0f} s")


def start_prefect_server(port: int, home: str | Path | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start `prefect server start` on 127.0.0.1:`port`; returns once /api/health answers."""
    env = {**os.environ, **prefect_env(port, home)}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns the handle
    proc = subprocess.Popen([_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://{HOST}:{port}/api/health", proc=proc)
    return proc


def start_mlflow_server(port: int, root: Path, log: Path | None = None) -> subprocess.Popen:
    """Start the MLflow UI on 127.0.0.1:`port` over the project's SQLite store and artifact folder."""
    store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    cmd = [_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
           "--backend-store-uri", store, "--artifacts-destination", str(root / "mlartifacts")]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://{HOST}:{port}/health", proc=proc)
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """Stop a service started here: SIGTERM to its process group, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
