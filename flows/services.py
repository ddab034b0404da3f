"""Local services for `nvila ui` and the tests: a Prefect server and an MLflow UI server, bound to 127.0.0.1."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def check_port_free(port: int, option: str) -> None:
    """A `ValueError` naming the port and the option to change when something already listens on it (a server this
    process did not start must never be mistaken for its own)."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ValueError(f"port {port} on {HOST} is in use (another `nvila ui`?); free it or choose another "
                             f"with {option}") from None


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


def _die_with(parent: int):
    """A `preexec_fn` for a server this process owns: the kernel sends it SIGTERM when this process dies (Linux
    PR_SET_PDEATHSIG), so a run killed with SIGKILL leaves no server behind, whose own session a signal to the run's
    process group never reaches. Elsewhere nothing: there `stop()` and the next run's clean-up are what remain."""

    def arm() -> None:
        if not sys.platform.startswith("linux"):
            return
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the owner died before the signal was armed
            os._exit(1)

    return arm


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
    """Start `prefect server start` on 127.0.0.1:`port` in its own session (a Ctrl-C in the terminal reaches the
    pipeline, which then records its state, not the server); returns once /api/health answers."""
    check_port_free(port, "--prefect-port")
    env = {**os.environ, **prefect_env(port, home)}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns the handle
    proc = subprocess.Popen([_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with(os.getpid()))
    wait_http(f"http://{HOST}:{port}/api/health", proc=proc)
    return proc


def start_mlflow_server(port: int, root: Path, log: Path | None = None) -> subprocess.Popen:
    """Start the MLflow UI on 127.0.0.1:`port` over the project's SQLite store and artifact folder."""
    check_port_free(port, "--mlflow-port")
    store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    cmd = [_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
           "--backend-store-uri", store, "--artifacts-destination", str(root / "mlartifacts")]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with(os.getpid()))
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


@contextmanager
def prefect_api(root: Path) -> Iterator[str]:
    """The Prefect API a command talks to: `$PREFECT_API_URL` when set (a real server), else a server this process
    starts on a free 127.0.0.1 port (logs in `.prefect/logs/`) and stops at the end. Call before importing prefect:
    its settings are read once, at import."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    logs = root / ".prefect" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    os.environ.update(prefect_env(port))
    # Runs started at once share the project's Prefect database: a server starting while another one migrates it
    # exits (code 3), so the starts take turns; once up, the servers share the database.
    with open(logs / "server-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = start_prefect_server(port, log=logs / "prefect-server.log")
    try:
        yield os.environ["PREFECT_API_URL"]
    finally:
        if "prefect" in sys.modules:  # send the logs still queued for the server before stopping it
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
        stop(proc)
        os.environ.pop("PREFECT_API_URL", None)


def watch_log(path: Path, prefix: str, markers: tuple[str, ...] = ("ERROR", "Traceback", "Exception")) -> None:
    """Print the lines of a server's log that report errors, as they are written (a daemon thread), so they are
    seen in the terminal rather than left in the log file."""

    def follow(start: int) -> None:
        with open(path, errors="replace") as fh:
            fh.seek(start)
            while True:
                line = fh.readline()
                if not line:
                    time.sleep(1.0)
                elif any(marker in line for marker in markers):
                    print(f"{prefix}: {line.rstrip()}  (full log: {path})", file=sys.stderr, flush=True)

    path.touch()
    # The offset is taken now, not when the thread first runs, so lines written in between are not skipped.
    start = path.stat().st_size
    threading.Thread(target=follow, args=(start,), daemon=True, name=f"watch-{path.name}").start()
