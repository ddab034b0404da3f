"""The DeepSpeed path: two processes under torchrun with ZeRO-2 (gloo on CPU) train a stage and save it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed JIT-builds its CPU comm op with c++")
def test_zero2_two_processes(project):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["projector_init"] |= {"deepspeed": str(REPO / "configs/deepspeed/zero2.json"), "max_steps": 2}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                        "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions")}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "flows.cli", "train", "projector_init"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(Path("runs/projector_init/meta.json").read_text())
    assert meta["deepspeed"].endswith("zero2.json") and meta["global_steps"] == 2
    assert (Path("runs/projector_init/checkpoints/checkpoint-2/global_step2")).is_dir()
    assert (Path("runs/projector_init/model.safetensors")).is_file()
