"""The DeepSpeed path: two processes under torchrun (gloo on CPU) train a stage with ZeRO-2, and with ZeRO-3 while one
rank's micro-batches are text-only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def torchrun_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                         "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions")}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed JIT-builds its CPU comm op with c++")
def test_zero2_two_processes(project, corpus_dir):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["projector_init"] |= {"deepspeed": str(REPO / "configs/deepspeed/zero2.json"), "max_steps": 2}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    env = torchrun_env()
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "flows.cli", "train", "projector_init",
                           "--data", str(corpus_dir / "data/raw/synth"), "--tokenizer",
                           str(corpus_dir / "runs/tokenizer"), "--out", "runs/projector_init"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(Path("runs/projector_init/meta.json").read_text())
    assert meta["deepspeed"].endswith("zero2.json") and meta["global_steps"] == 2
    assert (Path("runs/projector_init/model.safetensors")).is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed JIT-builds its CPU comm op with c++")
def test_zero3_with_a_text_only_rank_completes(project, corpus_dir):
    """Every rank runs the vision tower every step (a blank tile for text-only micro-batches), so the ZeRO-3
    all-gathers match across ranks; the model is built partitioned under deepspeed.zero.Init; the ranks close the
    process group together before they exit."""
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).with_name("zero3_worker.py")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(worker), "params.yaml",
                           str(REPO / "configs/deepspeed/zero3.json"), str(corpus_dir / "data/raw/synth"),
                           str(corpus_dir / "runs/tokenizer")],
                          env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["media"] >= 3 and ranks[0]["text_only"] == 0
    assert ranks[1]["text_only"] >= 3 and ranks[1]["media"] == 0
    assert ranks[0]["partitioned_at_build"] and ranks[1]["partitioned_at_build"]
    assert not ranks[0]["group_open_after_fit"] and not ranks[1]["group_open_after_fit"]  # no rank exits inside it
    meta = json.loads(Path("runs/zero3/meta.json").read_text())
    assert meta["deepspeed"].endswith("zero3.json") and meta["global_steps"] == 3 and meta["built_under_zero_init"]
    weights = load_file("runs/zero3/model.safetensors")
    assert weights["vision_tower.encoder.layers.0.mlp.fc1.weight"].shape == (128, 64)  # gathered whole at save
