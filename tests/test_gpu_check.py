"""bench/gpu_check.py: one line and exit 2 without a GPU; its check functions run on a CPU (dry run, tiny preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
CPU_CHECKS = ["train_bf16_vs_fp8", "eval_generate", "quantized_inference", "qlora_vs_lora_memory"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    proc = run("--out", str(tmp_path / "out.json"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    one_line = f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}); nothing to check"
    assert proc.stderr.strip() == one_line
    assert not (tmp_path / "out.json").exists()
    proc = run("--probe", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == one_line
    proc = run("--device", "cpu", "--only", "train_bf16_vs_fp8,warp_drive", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown check(s) ['warp_drive']" in proc.stderr


@pytest.mark.slow
def test_check_functions_run_on_a_cpu(tmp_path: Path) -> None:
    """The checks a CPU can run (flash-attn and the one-GPU ZeRO-3 need CUDA; their paths are tested in
    tests/data/test_data_packing.py and tests/train/test_deepspeed.py), end to end on the tiny preset."""
    out = tmp_path / "gpu_check.json"
    proc = run("--device", "cpu", "--preset", "tiny", "--steps", "5", "--batch-size", "4", "--only",
               ",".join(CPU_CHECKS), "--out", str(out), "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["checks"]) == CPU_CHECKS and all(c["ok"] for c in result["checks"].values())
    checks = result["checks"]
    assert checks["train_bf16_vs_fp8"]["fp8_path"] == "fp8-cpu-emulated" and checks["train_bf16_vs_fp8"]["steps"] == 5
    assert checks["eval_generate"]["device"] == "cpu" and checks["eval_generate"]["num_samples"] > 0
    assert checks["quantized_inference"]["w8a8_w4a16_decode_tokens_per_s"] > 0
    assert checks["qlora_vs_lora_memory"]["qlora_state_mb"] < checks["qlora_vs_lora_memory"]["lora_state_mb"]
    for line in ("check", *CPU_CHECKS):
        assert any(row.startswith(line) for row in proc.stdout.splitlines()), line
