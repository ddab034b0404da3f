"""Warm stage processes: a server that has imported torch, transformers and friends forks one child per stage command.

Every DVC stage is its own `nvila ...` process, and on a 2-core CPU importing torch, transformers (with peft and
bitsandbytes behind its Trainer), MLflow and great-expectations takes 13 to 24 s: minutes of a pipeline run that
computes nothing. During a run the flow starts one server per workspace (`serving`), with the environment of the
workspace's stage commands; the `nvila` entry point, finding `NVILA_WARM_SOCKET` set, sends its argv, working folder,
environment and standard streams (as file descriptors) to the server and waits. The server forks a child that takes
them over, runs the same `main` a cold process would, and sends back the exit status. The child is a session of its
own; the client forwards SIGINT, SIGTERM and SIGHUP to it, and a client that dies (SIGKILL) takes the child with it.

Only libraries are imported before the fork, never the project's modules (each stage loads its own code, so what a
stage imports stays what its `dvc.yaml` entry lists), and nothing runs that starts threads of work or initialises a
device: a host with a CUDA device starts no server (forking after CUDA initialisation is unsafe), so its stage
commands start cold, as they do outside a pipeline run (a plain `dvc repro`).
"""

from __future__ import annotations

import atexit
import importlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from glob import glob

log = logging.getLogger(__name__)
SOCKET_ENV = "NVILA_WARM_SOCKET"
# What a stage command imports that takes seconds (python -X importtime on this CPU): torch and transformers' model and
# Trainer code (peft, accelerate, bitsandbytes come with it), MLflow (tracking), great-expectations (validate).
PRELOAD = ("torch", "transformers.modeling_utils", "transformers.trainer", "mlflow", "great_expectations")
# Variables read when a library loads: a child whose environment differs in these would not match its imports.
IMPORT_TIME_ENV = ("PYTHONPATH", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                   "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "PYTHONWARNINGS")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READY_TIMEOUT_S = 300.0
PARENT_CHECK_S = 1.0


def has_cuda_device() -> bool:
    """Whether this host has an NVIDIA device node (checked without loading CUDA)."""
    return bool(glob("/dev/nvidia[0-9]*"))


# ---- client: the `nvila` entry point inside a pipeline run -------------------------------------------------------

def _send(sock: socket.socket, request: dict) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(sock, [struct.pack("!I", len(body)) + body], [0, 1, 2])


def run_client(path: str) -> int | None:
    """Run this process's command in a child of the warm server at `path`; its exit status, or None when the server
    can not take it (the caller then runs the command itself)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send(sock, {"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)})
    except OSError as exc:
        print(f"nvila: warm stage server {path} unreachable ({exc.strerror or exc}); starting cold", file=sys.stderr)
        return None
    replies = sock.makefile("r")
    first = replies.readline().split(" ", 1)
    if first[0] == "cold":
        print(f"nvila: warm stage server {path} can not run this command ({first[1].strip()}); starting cold",
              file=sys.stderr)
        return None
    child = int(first[1]) if first[0] == "pid" else None
    if child is None:
        print(f"nvila: error: warm stage server {path} answered {first!r}", file=sys.stderr)
        return 1

    def forward(signum: int, frame: object) -> None:
        try:
            os.killpg(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    last = replies.readline().split()
    if len(last) == 2 and last[0] == "exit":
        return int(last[1])
    print(f"nvila: error: the stage process {child} ended without an exit status (killed?)", file=sys.stderr)
    return 1


# ---- server ------------------------------------------------------------------------------------------------------

def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < 4:
        data += conn.recv(1 << 16)
    (size,) = struct.unpack("!I", data[:4])
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the client closed the connection mid-request")
        body += chunk
    return json.loads(body), list(fds)


def _standard_streams(env: dict[str, str]) -> None:
    """New sys.stdin/stdout/stderr on descriptors 0-2 (now the client's), buffered as a fresh interpreter would."""
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="surrogateescape")
    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = io.FileIO(fd, "w", closefd=False)
        tty = raw.isatty()
        stream = io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding="utf-8",
                                  errors="backslashreplace" if fd == 2 else "strict",
                                  line_buffering=tty or fd == 2, write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _exit_status(target: Callable[[], object]) -> int:
    try:
        target()
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:
        traceback.print_exc()
        return 1


def _child(conn: socket.socket, target: Callable[[], object], imported_with: dict[str, str | None]) -> None:
    """In the forked child: take over the client's streams, folder, environment and argv, run `target`, report."""
    code = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        request, fds = _receive(conn)
        env = {k: v for k, v in request["env"].items() if k != SOCKET_ENV}
        differs = [k for k in IMPORT_TIME_ENV if env.get(k) != imported_with[k]]
        if differs:
            conn.sendall(f"cold {', '.join(differs)} differ from the server's\n".encode())
            os._exit(0)
        for fd_to, fd_from in enumerate(fds):
            os.dup2(fd_from, fd_to)
            os.close(fd_from)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(request["argv"])
        _standard_streams(env)
        conn.sendall(f"pid {os.getpid()}\n".encode())
        # the client closes the connection only when it dies: then so does this stage, with its process group
        threading.Thread(target=lambda: conn.recv(1) or os.killpg(0, signal.SIGKILL), daemon=True).start()
        code = _exit_status(target)
        atexit._run_exitfuncs()  # what a normal interpreter exit runs: MLflow's run end, the trace, logging shutdown
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        conn.sendall(f"exit {code}\n".encode())
    finally:
        os._exit(code)


def resolve(spec: str) -> Callable[[], object]:
    """`module:function` to the function."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(path: str, target: str, preload: tuple[str, ...], parent: int) -> None:
    """Listen at `path` (at once, so early clients queue), import `preload`, then fork a child per connection that
    runs `target` (`module:function`; imported in the child, so project code loads there). It stops when its parent
    process, `parent` (the run that started it), is gone: given by the launcher, since a run killed while this process
    still starts or imports would otherwise leave it adopted by init, waiting for a parent that never changes again."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    imported_with = {k: os.environ.get(k) for k in IMPORT_TIME_ENV}  # as the client sees them: before the defaults
    from nvila_model.cli import configure_console  # the filters of the libraries' import-time noise come first

    configure_console()
    for name in preload:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; their status goes by socket
    listener.settimeout(PARENT_CHECK_S)
    while os.getppid() == parent:  # a run killed with SIGKILL can not stop its server: it stops on its own
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.setblocking(True)
        if os.fork() == 0:
            listener.close()
            _child(conn, resolve(target), imported_with)
        conn.close()


@contextmanager
def serving(env: dict[str, str], target: str = "flows.cli:main",
            preload: tuple[str, ...] = PRELOAD) -> Iterator[dict[str, str]]:
    """A warm server for commands run with environment `env` (os.environ plus these); yields the variables that send
    `nvila` commands to it (none on a host with a CUDA device). Stopped, with its socket, on exit."""
    if has_cuda_device():
        log.info("stage commands start cold: this host has a CUDA device, which a forked process can not use")
        yield {}
        return
    folder = tempfile.mkdtemp(prefix="nvila-warm-")  # short: a socket path must stay under 108 bytes
    path = os.path.join(folder, "s")
    code = f"from tasks.warm import serve; serve({path!r}, {target!r}, {tuple(preload)!r}, {os.getpid()})"
    server = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.exists(path) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.poll() is not None:
            raise RuntimeError(f"the warm stage server exited with {server.returncode} before listening")
        yield {SOCKET_ENV: path}
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)

