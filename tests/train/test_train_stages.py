"""Training stages: only the named modules change, LR groups follow the config, FP8 emulation, NaN guard, resume,
and a stage never loses its last good output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nvila_model.params import load_params
from nvila_model.train.config import MODULES, StageConfig
from nvila_model.train.hf_trainer import NonFiniteLossError, module_param_groups
from nvila_model.train.precision import is_fp8_target, resolve_attention
from nvila_model.train.stage import build_model, make_collator, run_stage
from tests.train.conftest import stage_params


def _load(stage: str, **overrides):
    configs = load_params("params.yaml", keys=[stage, "model", "datasets"])
    cfg = StageConfig(**(stage_params(stage) | overrides)) if overrides else configs[stage]
    return cfg, configs["model"], configs["datasets"]


def _run(stage: str, corpus: Path, out: str, init: Path | None = None, pruned: Path | None = None, **overrides):
    cfg, model_params, datasets = _load(stage, **overrides)
    tokenizer = corpus / "runs/tokenizer" if init is None else None
    return run_stage(stage, cfg, model_params, datasets, data=corpus / "data/raw/synth", out=out, init=init,
                     tokenizer=tokenizer, pruned=pruned)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_first_stage_trains_only_the_projector_and_chains(project, corpus_dir):
    out = _run("projector_init", corpus_dir, "runs/projector_init")
    cfg, model_params, _ = _load("projector_init")
    from transformers import set_seed

    set_seed(cfg.seed)  # a fresh model with the same seed is the starting point
    fresh, _ = build_model(cfg, model_params, tokenizer_dir=corpus_dir / "runs/tokenizer")
    after = _weights(out)
    for name, before in fresh.state_dict().items():
        same = torch.equal(before, after[name])
        assert same != name.startswith("projector."), name
    meta = json.loads((out / "meta.json").read_text())
    assert meta["precision"] == "fp32" and (out / "manifest.json").is_file()
    assert meta["attention"] == "sdpa_varlen" and meta["batch_layout"] == (
        "one packed row per micro-batch, no padding; one causal SDPA call per sample (sdpa_varlen) on cu_seq_lens_q/k")
    history = json.loads((out / "log_history.json").read_text())
    assert [row["step"] for row in history] == [2, 4] and all("loss" in row for row in history)
    assert not (project / ".nvila" / "work" / "projector_init").exists() or not any(
        (project / ".nvila" / "work" / "projector_init").iterdir()), "a finished stage leaves nothing to resume"


@pytest.mark.parametrize("stage", ["vision_pretrain", "token_pretrain"])
def test_later_stages_train_only_their_modules(project, corpus_dir, stage):
    start = _run("projector_init", corpus_dir, "runs/projector_init")
    out = _run(stage, corpus_dir, f"runs/{stage}", init=start)
    cfg, model_params, _ = _load(stage)
    before, after = _weights(start), _weights(out)
    model, _ = build_model(cfg, model_params, init=start)
    never = set(model.unused_vision_parameters())
    assert never and all(n.startswith("vision_tower.") for n in never)
    for name, tensor in before.items():
        changed = not torch.equal(tensor, after[name])
        assert changed == (name.split(".")[0] in cfg.train_modules and name not in never), name


def test_param_groups_carry_the_configured_learning_rates(project, corpus_dir):
    cfg, model_params, _ = _load("image_sft", lr={"vision_tower": 1e-5, "projector": 2e-4, "language_model": 1e-4})
    model, _ = build_model(cfg, model_params, tokenizer_dir=corpus_dir / "runs/tokenizer")
    groups = module_param_groups(model, cfg.lr, 0.0)
    assert {g["name"]: g["lr"] for g in groups} == cfg.lr
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="one learning rate per trained module"):
        StageConfig(train_modules=["projector"], lr={}, datasets=["d"])


def test_fp8_emulation_converts_exactly_the_llm_linears_and_trains(project, corpus_dir):
    out = _run("token_pretrain", corpus_dir, "runs/token_pretrain", precision="fp8", max_steps=2)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["precision"] == "fp8-cpu-emulated"
    cfg, model_params, _ = _load("token_pretrain")
    model, _ = build_model(cfg, model_params, tokenizer_dir=corpus_dir / "runs/tokenizer")
    targets = [n for n, m in model.named_modules() if is_fp8_target(m, n)]
    layers = model.config.text_config.num_hidden_layers
    assert len(targets) == 7 * layers and not any("vision" in n or "projector" in n or "lm_head" in n for n in targets)
    assert meta["fp8_layers"] == 7 * layers


def test_fp8_scaled_mm_meets_the_multiple_of_16_rule_on_any_token_count(project, corpus_dir, monkeypatch):
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
    out = _run("token_pretrain", corpus_dir, "runs/token_pretrain", precision="fp8", fp8_emulate=False, max_steps=2,
               batch_size=3)
    assert json.loads((out / "meta.json").read_text())["precision"] == "fp8-cpu-scaled-mm"
    assert any(n % 16 for n in token_counts), token_counts  # else this test would prove nothing
    assert len(shapes) == 3 * len(token_counts)  # output, grad_input and grad_weight of every float8 Linear call
    broken = [(a, b) for a, b in shapes if a[1] % 16 or b[0] % 16 or b[1] % 16]
    assert not broken, broken[:3]


def _with_poison(monkeypatch, at_step: int) -> None:
    """Make the next training run's loss NaN after step `at_step` (the LLM head is filled with NaN)."""
    from transformers import TrainerCallback

    import nvila_model.train.stage as stage_mod

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == at_step:
                with torch.no_grad():
                    model.language_model.lm_head.weight.fill_(float("nan"))

    real_trainer = stage_mod.NVILATrainer
    monkeypatch.setattr(stage_mod, "NVILATrainer", lambda *a, **kw: real_trainer(
        *a, **{**kw, "callbacks": [*kw.get("callbacks", []), Poison()]}))


def test_nan_loss_stops_keeping_the_checkpoint_and_the_previous_output(project, corpus_dir, monkeypatch):
    good = _run("token_pretrain", corpus_dir, "runs/token_pretrain", max_steps=2)
    before = _weights(good)
    _with_poison(monkeypatch, at_step=2)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 3"):
        _run("token_pretrain", corpus_dir, "runs/token_pretrain", max_steps=6)
    checkpoints = list((project / ".nvila" / "work" / "token_pretrain").glob("*/checkpoints/checkpoint-2"))
    assert len(checkpoints) == 1, "the last good checkpoint is kept for resuming"
    after = _weights(good)
    assert all(torch.equal(before[k], after[k]) for k in before), "the previous output must survive"


def test_corrupt_input_names_the_file_and_keeps_the_previous_output(project, corpus_dir):
    start = _run("projector_init", corpus_dir, "runs/projector_init")
    done = _run("vision_pretrain", corpus_dir, "runs/vision_pretrain", init=start)
    finished = (done / "model.safetensors").read_bytes()
    weights = start / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{weights}: cannot be loaded") as info:
        _run("vision_pretrain", corpus_dir, "runs/vision_pretrain", init=start)
    assert "\n" not in str(info.value)
    assert (done / "model.safetensors").read_bytes() == finished and (done / "meta.json").is_file()


def test_missing_pruned_subset_fails_naming_the_file(project, corpus_dir):
    with pytest.raises(ValueError, match="data/pruned/train.jsonl: pruned subset not found"):
        _run("image_sft", corpus_dir, "runs/image_sft", pruned=Path("data/pruned"))


def _train_cmd(corpus: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "train", "projector_init", "--data", str(corpus / "data/raw/synth"),
            "--tokenizer", str(corpus / "runs/tokenizer"), "--out", out]


def test_sigkill_mid_stage_then_resume_matches_uninterrupted(project, corpus_dir):
    """Weights, history and summary after kill + resume equal an uninterrupted run's (CPU fp32, same seed)."""
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace(
        "max_steps: 4", "max_steps: 12"))
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(corpus_dir, "runs/straight"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd(corpus_dir, "runs/killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    work = project / ".nvila" / "work" / "projector_init"
    deadline = time.time() + 120
    while not list(work.glob("*/checkpoints/checkpoint-4/trainer_state.json")) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    assert list(work.glob("*/checkpoints/checkpoint-4")) and proc.poll() is None, "should be mid-stage"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Path("runs/killed").exists(), "an unfinished stage writes no output"
    subprocess.run(_train_cmd(corpus_dir, "runs/killed"), check=True, env=env, capture_output=True, text=True)
    straight, killed = Path("runs/straight"), Path("runs/killed")
    meta_s, meta_k = (json.loads((p / "meta.json").read_text()) for p in (straight, killed))
    assert meta_k["resumed_from"] and "checkpoint-" in meta_k["resumed_from"] and meta_s["resumed_from"] is None
    assert meta_k["final_loss"] == meta_s["final_loss"] and meta_k["global_steps"] == meta_s["global_steps"] == 12
    history_s, history_k = (json.loads((p / "log_history.json").read_text()) for p in (straight, killed))
    assert [row["step"] for row in history_s] == list(range(2, 13, 2)) and history_k == history_s
    ws, wk = _weights(straight), _weights(killed)
    for name in ws:
        assert torch.equal(ws[name], wk[name]), name


def test_packed_stages_lay_one_row_per_micro_batch_for_either_varlen_kernel():
    from nvila_model.data.collate import PackingCollator, PaddingCollator

    cfg = StageConfig(train_modules=["projector"], lr={"projector": 1e-3}, datasets=["d"])
    flash, flash_layout = make_collator(cfg, 0, "flash_attention_2")
    varlen, varlen_layout = make_collator(cfg, 0, resolve_attention("auto"))
    assert isinstance(flash, PackingCollator) and isinstance(varlen, PackingCollator)
    assert "flash-attn varlen" in flash_layout and "sdpa_varlen" in varlen_layout
    padded, layout = make_collator(StageConfig(train_modules=["projector"], lr={"projector": 1e-3}, datasets=["d"],
                                               packing=False), 7, "sdpa_varlen")
    assert isinstance(padded, PaddingCollator) and padded.pad_id == 7 and layout.startswith("padded")


def test_module_names_are_the_model_children(project, corpus_dir):
    cfg, model_params, _ = _load("projector_init")
    model, _ = build_model(cfg, model_params, tokenizer_dir=corpus_dir / "runs/tokenizer")
    assert set(MODULES) == {n for n, _ in model.named_children()}


def test_a_disabled_stage_passes_the_previous_model_on_unchanged(project, corpus_dir):
    start = _run("projector_init", corpus_dir, "runs/projector_init")
    out = _run("vision_pretrain", corpus_dir, "runs/vision_pretrain", init=start, enabled=False)
    before, after = _weights(start), _weights(out)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["enabled"] is False and meta["global_steps"] == 0 and meta["train_seconds"] == 0.0
    assert json.loads((out / "log_history.json").read_text()) == [] and (out / "manifest.json").is_file()
    assert not (out / "checkpoints").exists()
    nxt = _run("token_pretrain", corpus_dir, "runs/token_pretrain", init=out, max_steps=2)  # the chain goes on
    assert json.loads((nxt / "meta.json").read_text())["global_steps"] == 2
    with pytest.raises(ValueError, match="projector_init: enabled is false, but the first training stage"):
        _run("projector_init", corpus_dir, "runs/first", enabled=False)


def test_a_rerun_of_the_tokenizer_for_another_architecture_writes_the_same_bytes(corpus_dir, tmp_path, monkeypatch):
    """The tokenizer reads `model` (its vocabulary), so a new architecture re-runs it; equal bytes keep DVC's hash, and
    every stage after it (scores, pruning) is restored from the cache instead of recomputed. Also from a later commit:
    a frontier variant run after the project moved on by a commit re-scored for 14 minutes when the tokenizer's
    manifest held the git revision."""
    from nvila_model.data.registry import DatasetsConfig
    from nvila_model.train.config import ModelParams, TokenizerConfig
    from nvila_model.train.tokenizer_stage import run_tokenizer
    from tests.train.conftest import DATASETS

    repo = tmp_path / "project"  # the stage runs in a git checkout, as under DVC
    repo.mkdir()
    monkeypatch.chdir(repo)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], check=True)
    outs = []
    for i, overrides in enumerate(({}, {"projector": "none", "dynamic_s2": False})):
        if i:
            time.sleep(1.1)  # a timestamp in any output file would now differ
        (repo / "code.py").write_text(f"revision = {i}\n")
        subprocess.run([*git, "add", "code.py"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", f"revision {i}"], check=True)
        outs.append(run_tokenizer(TokenizerConfig(), ModelParams(overrides=overrides), DatasetsConfig(**DATASETS),
                                  corpus_dir / "data/raw/synth", tmp_path / f"tok{i}"))
    files = [{p.name: p.read_bytes() for p in out.iterdir()} for out in outs]
    assert files[0].keys() == files[1].keys() and "manifest.json" in files[0]
    assert [name for name in files[0] if files[0][name] != files[1][name]] == []


def test_a_checkpoint_written_partly_is_not_resumed(tmp_path):
    from nvila_model.train.stage import resume_point

    ckpts = tmp_path / "work" / "checkpoints"
    for step, files in ((2, ("trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors")),
                        (4, ("model.safetensors",))):  # killed while saving step 4
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        for name in files:
            (ckpts / f"checkpoint-{step}" / name).write_text("x")
    assert resume_point(tmp_path / "work", resume=True) == str(ckpts / "checkpoint-2")
    assert not (ckpts / "checkpoint-4").exists()
    (ckpts / "checkpoint-2" / "optimizer.pt").unlink()
    assert resume_point(tmp_path / "work", resume=True) is None and not any(ckpts.iterdir())


def test_a_deepspeed_checkpoint_is_resumed_once_written_whole(tmp_path):
    """DeepSpeed saves the model, optimizer and scheduler states under the folder its `latest` file names (no
    optimizer.pt, and no weights file under ZeRO-3); such a checkpoint resumes, one without that folder does not."""
    from nvila_model.train.stage import resume_point

    ckpts = tmp_path / "work" / "checkpoints"
    for step, tag_written in ((2, True), (4, False)):  # killed while DeepSpeed saved step 4
        ckpt = ckpts / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text("{}")
        (ckpt / "latest").write_text(f"global_step{step}")
        if tag_written:
            (ckpt / f"global_step{step}").mkdir()
    assert resume_point(tmp_path / "work", resume=True) == str(ckpts / "checkpoint-2")
    assert not (ckpts / "checkpoint-4").exists()
