"""The stage adapters agree with params.yaml and dvc.yaml, and flow parameters route to the right config fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.caching import SOURCE_ROOT, stage_fingerprint
from tasks.routing import overrides, pruned_manifest, relocate
from tasks.stages import ORDER, STAGES, TRAIN_STAGES, spec

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"


def test_every_stage_config_loads_from_params() -> None:
    for stage in ORDER:
        configs = spec(stage).load(PARAMS)
        assert set(configs) == {key for key, _ in spec(stage).keys}
        spec(stage).build(configs)  # round trip through the dataclasses


def test_code_deps_exist() -> None:
    for adapter in STAGES.values():
        for path in adapter.code:
            assert (SOURCE_ROOT / path).exists(), f"{adapter.name}: code dep {path} missing"


def test_dvc_stages_match_the_adapters() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == list(ORDER), "one dvc.yaml stage per pipeline stage, in pipeline order"
    for name, stage in dvc.items():
        adapter = spec(name)
        assert stage["cmd"].startswith("nvila "), name
        # stages training on the pruned subset also read the prune point (their --pruned-manifest path)
        prune_point = sorted(p for p in stage["params"] if p.startswith("prune."))
        if "--pruned-manifest" in stage["cmd"]:
            assert prune_point == ["prune.keep_ratio", "prune.method"], name
        elif name in TRAIN_STAGES:  # pre-training reads no pruned data: a new keep ratio must not re-run it
            assert "data/pruned" not in stage["deps"] and not prune_point, name
        own = sorted(p for p in stage["params"] if not p.startswith("prune."))
        assert own == sorted(k for k, _ in adapter.keys), f"{name}: params"
        if name != "eval_quantized":
            out = adapter.output(adapter.load(PARAMS))
            outs = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]
            metrics = [m if isinstance(m, str) else next(iter(m)) for m in stage.get("metrics", [])]
            assert any(p == out or p.startswith(out + "/") for p in outs + metrics), f"{name}: output {out}"


def test_flow_parameters_route_to_stage_fields() -> None:
    values = {"preset": "small", "seed": 7, "keep_ratio": 0.7, "prune_method": "random"}
    assert overrides("prune", values, PARAMS) == {"prune": {"seed": 7, "keep_ratio": 0.7, "method": "random"}}
    assert overrides("generate", values, PARAMS) == {"generate": {"seed": 7}}
    train = overrides(TRAIN_STAGES[0], values, PARAMS)
    assert train["model"] == {"preset": "small"} and train[TRAIN_STAGES[0]]["seed"] == 7
    prune = {"out_dir": "data/pruned", "method": "random", "keep_ratio": 0.7}
    assert pruned_manifest(prune) == "data/pruned/random-0.7/train.jsonl"
    pruned = [s for s in TRAIN_STAGES if "pruned_manifest" in (yaml.safe_load(PARAMS.read_text())[s] or {})]
    for stage in pruned:  # params.yaml leaves these null for the pipeline to fill
        routed = overrides(stage, {**values, "stages": ["prune", stage]}, PARAMS)[stage]
        assert routed["pruned_manifest"] == pruned_manifest(prune)


def test_output_root_relocates_training_and_after() -> None:
    assert relocate("runs/video_sft", "runs/sweep/a") == "runs/sweep/a/video_sft"
    assert relocate("runs/tokenizer", "runs/sweep/a") == "runs/tokenizer"
    moved = overrides("eval", {"output_root": "runs/sweep/a"}, PARAMS)["eval"]
    assert moved["checkpoint"].startswith("runs/sweep/a/") and moved["out_dir"] == "runs/sweep/a/eval"


def test_cache_fingerprint_follows_input_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = spec("prune").load(PARAMS)
    Path("data/scores").mkdir(parents=True)
    Path("data/scores/scores.parquet").write_text("a")
    before = stage_fingerprint("prune", config)
    Path("data/scores/scores.parquet").write_text("b")
    after = stage_fingerprint("prune", config)
    assert before != after and any(k.startswith("code:") for k in after)
    for stage in ORDER:  # an unset optional path must not turn into "." (the whole project)
        assert all(p not in ("", ".") for p in stage_fingerprint(stage, spec(stage).load(PARAMS)))
