"""Stage commands for tests/orchestration/test_warm.py: what the warm server's children run instead of `nvila`."""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path


def main() -> None:
    """argv: `report OUT CODE` prints where and how it runs, registers an exit hook writing OUT, exits CODE;
    `wait OUT` writes its pid to OUT and sleeps until interrupted (then prints it and exits 130)."""
    command, out = sys.argv[1], Path(sys.argv[2])
    if command == "report":
        print(f"cwd={os.getcwd()} value={os.environ.get('WARM_TEST_VALUE')} argv={sys.argv[1:]}")
        print("to stderr", file=sys.stderr)
        atexit.register(out.write_text, "exit hook ran")
        sys.exit(int(sys.argv[3]))
    out.write_text(str(os.getpid()))
    try:
        time.sleep(600)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
