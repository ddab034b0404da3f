"""Training stages: only the named modules change, LR groups follow the config, FP8 emulation, NaN guard, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nvila_model.data.registry import DatasetsConfig
from nvila_model.params import load_config
from nvila_model.train.config import MODULES, ModelParams, StageConfig
from nvila_model.train.hf_trainer import NonFiniteLossError, module_param_groups
from nvila_model.train.precision import is_fp8_target
from nvila_model.train.stage import build_model, make_collator, run_stage


def _load(stage: str, **overrides):
    cfg = load_config(stage, StageConfig, overrides=overrides)
    return cfg, load_config("model", ModelParams), load_config("datasets", DatasetsConfig)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_first_stage_trains_only_the_projector_and_chains(project):
    out = run_stage("projector_init", *_load("projector_init"))
    cfg, model_params, datasets = _load("projector_init")
    cfg.max_steps = 0  # a fresh model with the same seed is the starting point
    torch.manual_seed(cfg.seed)
    from transformers import set_seed

    set_seed(cfg.seed)
    fresh, _ = build_model(cfg, model_params)
    after = _weights(out)
    for name, before in fresh.state_dict().items():
        same = torch.equal(before, after[name])
        assert same != name.startswith("projector."), name
    meta = (out / "meta.json").read_text()
    assert '"precision": "fp32"' in meta and (out / "manifest.json").is_file()
    assert '"batch_layout": "packed rows of <= 512 tokens, block-diagonal mask from position_ids"' in meta
    assert any(p.name.startswith("checkpoint-") for p in (out / "checkpoints").iterdir())


@pytest.mark.parametrize("stage", ["vision_pretrain", "token_pretrain"])
def test_later_stages_train_only_their_modules(project, stage):
    start = run_stage("projector_init", *_load("projector_init"))
    cfg, model_params, datasets = _load(stage, init_from=str(start))
    out = run_stage(stage, cfg, model_params, datasets)
    before, after = _weights(start), _weights(out)
    model, _ = build_model(cfg, model_params)
    never = set(model.unused_vision_parameters())
    assert never and all(n.startswith("vision_tower.") for n in never)
    for name, tensor in before.items():
        changed = not torch.equal(tensor, after[name])
        assert changed == (name.split(".")[0] in cfg.train_modules and name not in never), name


def test_param_groups_carry_the_configured_learning_rates(project):
    cfg, model_params, _ = _load("image_sft", lr={"vision_tower": 1e-5, "projector": 2e-4, "language_model": 1e-4})
    model, _ = build_model(cfg, model_params)
    groups = module_param_groups(model, cfg.lr, 0.0)
    assert {g["name"]: g["lr"] for g in groups} == cfg.lr
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="one learning rate per trained module"):
        StageConfig(out_dir="x", train_modules=["projector"], lr={}, datasets=["d"]).validate("s")


def test_fp8_emulation_converts_exactly_the_llm_linears_and_trains(project):
    cfg, model_params, datasets = _load("token_pretrain", precision="fp8", max_steps=3)
    out = run_stage("token_pretrain", cfg, model_params, datasets)
    meta = (out / "meta.json").read_text()
    assert '"precision": "fp8-cpu-emulated"' in meta
    model, _ = build_model(cfg, model_params)
    targets = [n for n, m in model.named_modules() if is_fp8_target(m, n)]
    layers = model.config.text_config.num_hidden_layers
    assert len(targets) == 7 * layers and not any("vision" in n or "projector" in n or "lm_head" in n for n in targets)
    assert f'"fp8_layers": {7 * layers}' in meta
    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    convert_to_float8_training(model, module_filter_fn=is_fp8_target)
    assert {n for n, m in model.named_modules() if isinstance(m, Float8Linear)} == set(targets)


def test_fp8_scaled_mm_meets_the_multiple_of_16_rule_on_any_token_count(project, monkeypatch):
    """The real float8 matmul (`fp8_emulate: false`): cuBLAS's `torch._scaled_mm` needs the inner dimension and both
    dimensions of the second operand to be multiples of 16; the CPU kernel does not check, so this test does, on
    every call, with micro-batches whose token count (the weight gradient's inner dimension) is not."""
    from torchao.float8.float8_linear import Float8Linear

    shapes, token_counts = [], []
    real_mm, real_forward = torch._scaled_mm, Float8Linear.forward

    def scaled_mm(a, b, *args, **kwargs):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return real_mm(a, b, *args, **kwargs)

    def forward(self, x):
        token_counts.append(x.shape[:-1].numel())
        return real_forward(self, x)

    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    monkeypatch.setattr(Float8Linear, "forward", forward)
    cfg, model_params, datasets = _load("token_pretrain", precision="fp8", fp8_emulate=False, max_steps=2,
                                        batch_size=3)
    out = run_stage("token_pretrain", cfg, model_params, datasets)
    assert '"precision": "fp8-cpu-scaled-mm"' in (out / "meta.json").read_text()
    assert any(n % 16 for n in token_counts), token_counts  # else this test would prove nothing
    assert len(shapes) == 3 * len(token_counts)  # output, grad_input and grad_weight of every float8 Linear call
    broken = [(a, b) for a, b in shapes if a[1] % 16 or b[0] % 16 or b[1] % 16]
    assert not broken, broken[:3]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(project):
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.language_model.lm_head.weight.fill_(float("nan"))

    cfg, model_params, datasets = _load("token_pretrain", max_steps=6)
    from nvila_model.train import hf_trainer

    original = hf_trainer.StageCallback.on_train_begin

    def begin(self, args, state, control, **kwargs):
        kwargs["model"] and self  # the poison callback is added next to ours
        return original(self, args, state, control, **kwargs)

    import nvila_model.train.stage as stage_mod

    real_trainer = stage_mod.NVILATrainer

    def with_poison(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Poison()]
        return real_trainer(*args, **kwargs)

    stage_mod.NVILATrainer = with_poison
    try:
        with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 3"):
            run_stage("token_pretrain", cfg, model_params, datasets)
    finally:
        stage_mod.NVILATrainer = real_trainer
    assert (Path(cfg.out_dir) / "checkpoints" / "checkpoint-2").is_dir()
    assert not (Path(cfg.out_dir) / "meta.json").exists()


def _train_cmd(out_dir: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "train", "projector_init", "--out-dir", out_dir, "--max-steps", "12"]


def test_sigkill_mid_stage_then_resume_matches_uninterrupted(project):
    """Weights after kill + resume equal an uninterrupted run exactly (CPU fp32, same seed and data order)."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd("runs/straight"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd("runs/killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = Path("runs/killed/checkpoints/checkpoint-4/trainer_state.json")
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.is_file() and proc.poll() is None, "the run should be mid-stage with a checkpoint on disk"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Path("runs/killed/meta.json").exists()
    resumed = subprocess.run(_train_cmd("runs/killed"), check=True, env=env, capture_output=True, text=True)
    assert '"resumed_from"' in Path("runs/killed/meta.json").read_text()
    assert "checkpoint-" in Path("runs/killed/meta.json").read_text(), resumed.stderr[-2000:]
    straight, killed = _weights(Path("runs/straight")), _weights(Path("runs/killed"))
    for name in straight:
        assert torch.equal(straight[name], killed[name]), name


def test_flash_attention_packs_one_row_per_micro_batch():
    cfg = StageConfig(out_dir="x", train_modules=["projector"], lr={"projector": 1e-3}, datasets=["d"], pack_tokens=64)
    flash, layout = make_collator(cfg, 0, "flash_attention_2")
    assert flash.max_tokens is None and flash.flash_attn_kwargs and "varlen" in layout
    sdpa, layout = make_collator(cfg, 0, "sdpa")
    assert sdpa.max_tokens == 64 and not sdpa.flash_attn_kwargs and "<= 64 tokens" in layout


def test_module_names_are_the_model_children(project):
    cfg, model_params, _ = _load("projector_init")
    model, _ = build_model(cfg, model_params)
    assert set(MODULES) == {n for n, _ in model.named_children()}
