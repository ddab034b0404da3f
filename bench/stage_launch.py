"""Stage command start-up: `nvila` stage commands started cold (a new interpreter imports torch, transformers,
MLflow, great-expectations) vs from the warm stage server a pipeline run starts (tasks/warm.py); same commands, same
inputs, alternated in one run. The commands are real stages on a small generated corpus (validate, tokenizer), so
the difference is what a pipeline run saves per stage.

    python bench/stage_launch.py [--repeats 3] [--scale 0.05]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_table, write_results  # noqa: E402
from nvila_model.params import read_params  # noqa: E402
from tasks.warm import PRELOAD, serving  # noqa: E402


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.05, help="generate.scale of the corpus")
    args = parser.parse_args()
    nvila = str(Path(sys.executable).parent / "nvila")
    with tempfile.TemporaryDirectory(prefix="nvila-launch-") as tmp:
        project = Path(tmp)
        params = read_params(ROOT / "params.yaml")
        params["generate"]["scale"] = args.scale
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "NVILA_PROJECT_DIR": str(project), "PYTHONPATH": str(ROOT)}
        env.pop("NVILA_WARM_SOCKET", None)
        _timed([nvila, "data", "generate", "--out", "raw"], project, env)
        commands = {"validate": lambda i: [nvila, "data", "validate", "--raw", "raw", "--out", f"validated{i}"],
                    "tokenizer": lambda i: [nvila, "tokenizer", "--data", "validatedw", "--out", f"tok{i}"]}
        seconds: dict[tuple[str, str], list[float]] = {}
        started = time.perf_counter()
        with serving({"PYTHONPATH": str(ROOT), "NVILA_PROJECT_DIR": str(project)}) as launch:
            first_warm = _timed(commands["validate"]("w"), project, {**env, **launch})  # waits for the imports
            server_ready_s = time.perf_counter() - started
            for i in range(args.repeats):
                for name, command in commands.items():
                    for mode, extra in (("cold", {}), ("warm", launch)):
                        seconds.setdefault((name, mode), []).append(
                            _timed(command(f"{mode}{i}"), project, {**env, **extra}))
    rows = []
    for name in commands:
        cold, warm = (statistics.median(seconds[(name, m)]) for m in ("cold", "warm"))
        rows.append({"command": name, "cold_s": cold, "warm_s": warm, "saved_s": cold - warm, "speedup": cold / warm})
    print_table(rows, ["command", "cold_s", "warm_s", "saved_s", "speedup"])
    print(f"warm server: first command done {server_ready_s:.1f} s after the start ({first_warm:.1f} s of it "
          f"the command itself, waiting for the imports: {', '.join(PRELOAD)})")
    write_results("stage_launch", {"repeats": args.repeats, "scale": args.scale, "rows": rows,
                                   "first_warm_command_s": first_warm, "preload": list(PRELOAD),
                                   "samples": {f"{k[0]}/{k[1]}": v for k, v in seconds.items()}})


if __name__ == "__main__":
    main()
