"""The warm stage server: a command runs in a forked child with the caller's streams, folder, environment and argv;
its exit status, its exit hooks and signals go through; a dead caller or a dead pipeline leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import warm
from tests.orchestration.conftest import REPO

TARGET = "tests.orchestration.warm_target:main"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may be reaped between the signal and this read
        return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert path.exists(), proc.communicate()
    return path.read_text()


@pytest.fixture
def server():
    with warm.serving({"PYTHONPATH": str(REPO)}, target=TARGET, preload=("json",)) as launch:
        yield {**os.environ, "PYTHONPATH": str(REPO), **launch}


def _nvila(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """The `nvila` entry point (flows.cli:main) as DVC starts it."""
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_command_runs_in_a_child_of_the_server_with_the_callers_streams_folder_and_environment(server, tmp_path):
    hook = tmp_path / "hook"
    proc = _nvila(["report", str(hook), "3"], {**server, "WARM_TEST_VALUE": "42"}, tmp_path)
    out, err = proc.communicate(timeout=120)
    # a cold `nvila` has no `report` command: this output comes from the server's target
    assert proc.returncode == 3, err
    assert f"cwd={tmp_path} value=42 argv=['report', '{hook}', '3']" in out
    assert err.strip() == "to stderr"
    assert hook.read_text() == "exit hook ran", "the child runs the exit hooks a normal interpreter exit runs"


def test_ctrl_c_reaches_the_stage_and_its_exit_status_comes_back(server, tmp_path):
    pid_file = tmp_path / "pid"
    proc = _nvila(["wait", str(pid_file)], server, tmp_path)
    child = int(_wait_for(pid_file, proc))
    assert child != proc.pid
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in out


def test_a_killed_caller_takes_its_stage_with_it(server, tmp_path):
    pid_file = tmp_path / "pid"
    proc = _nvila(["wait", str(pid_file)], server, tmp_path)
    child = int(_wait_for(pid_file, proc))
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the stage outlived the command that ran it"


def test_a_caller_with_another_import_environment_is_told_to_start_cold(server, tmp_path):
    code = "import sys; from tasks.warm import run_client; print('result', run_client(sys.argv[1]))"
    env = {**server, "PYTHONHASHSEED": "123"}
    done = subprocess.run([sys.executable, "-c", code, env[warm.SOCKET_ENV]], env=env, capture_output=True,
                          text=True, timeout=60)
    assert "result None" in done.stdout
    assert "can not run this command (PYTHONHASHSEED differ from the server's); starting cold" in done.stderr


@pytest.mark.parametrize("preload", [(), ("slow_import",)], ids=["serving", "still-importing"])
def test_the_server_stops_when_the_run_that_started_it_is_killed(tmp_path, preload):
    """Also when the run dies while the server still imports its libraries (seconds for torch): the server was then
    adopted by init before it looked at its parent, and once outlived a killed test run by minutes."""
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(3)\n")
    code = ("import sys, time\nfrom tasks.warm import serving\n"
            f"with serving({{}}, target=sys.argv[1], preload={preload!r}) as env:\n"
            "    print(env['NVILA_WARM_SOCKET'], flush=True)\n    time.sleep(600)\n")
    run = subprocess.Popen([sys.executable, "-c", code, TARGET], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})
    assert run.stdout is not None
    socket_path = run.stdout.readline().strip()
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    servers = [int(line.split()[0]) for line in ps.splitlines() if socket_path in line]
    assert servers, ps
    run.kill()
    run.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in servers), "the server outlived its run"


def test_a_host_with_a_cuda_device_starts_stage_commands_cold(monkeypatch):
    monkeypatch.setattr(warm, "has_cuda_device", lambda: True)
    with warm.serving({}) as launch:
        assert launch == {}
