"""dvc.yaml is the one definition of the stages: the flow's plan comes from it, and run parameters become params."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.config import SHORTCUTS, parse_overrides, run_overrides
from nvila_model.params import library_keys
from tasks.dvc_stages import plan, stage_graph

REPO = Path(__file__).resolve().parents[2]


def test_plan_follows_the_dependency_graph_of_dvc_yaml() -> None:
    order, needs = stage_graph(REPO)
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    # Declared in a valid order; `foreach` families expand to one stage per params entry (none by default).
    assert order == [name for name, stage in declared.items() if "foreach" not in stage]
    assert needs["image_sft"] == {"validate", "token_pretrain", "prune"} and needs["generate"] == set()
    assert plan(REPO, ["validate", "generate"]) == ["generate", "validate"]
    upstream = plan(REPO, ["eval"])
    assert upstream[-1] == "eval" and "prune" in upstream and "finetune" not in upstream
    assert plan(REPO, None) == order
    with pytest.raises(ValueError, match=r"\['nonsense'\] are not stages of dvc.yaml"):
        plan(REPO, ["nonsense"])


def test_every_stage_runs_an_nvila_command_on_params_the_library_knows() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    known = set(library_keys())
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # a `foreach` family defines its stages under `do`
        assert stage["cmd"].startswith("nvila "), name
        assert {key.split(".")[0] for key in stage.get("params", [])} <= known, name
        for key in stage.get("params", []):  # DVC refuses to run a stage whose listed param is not in the file
            value = params
            for part in key.split("."):
                assert isinstance(value, dict) and part in value, f"{name}: param {key} is not in params.yaml"
                value = value[part]
        paths = [p for p in (*stage.get("deps", []), *stage.get("outs", [])) if isinstance(p, str) and "/" in p]
        data_paths = [p for p in paths if not p.startswith(("nvila_model", "configs"))]
        assert all(p.startswith("${paths.") for p in data_paths), f"{name}: paths are written once, in vars"


def test_score_depends_on_the_records_and_their_media_not_on_validations_settings() -> None:
    """Validation writes its settings into its folder (manifest.json): a setting that keeps the same records, such as
    the frontier's s2_uncompressed raising the token limit with the model's token count, must not re-score."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    data = {d.def_path for d in stages["score"].deps if not d.def_path.startswith(("nvila_model", "params"))}
    validated = stages["validate"].outs[0].def_path
    raw = next(d.def_path for d in stages["validate"].deps if d.def_path.startswith("data"))
    assert data == {f"{validated}/train.jsonl", raw, "runs/tokenizer"}
    assert f"--media-root {raw}" in stages["score"].cmd, "given, not read from validation's manifest.json"


def test_run_parameters_become_params_settings() -> None:
    settings = run_overrides({"preset": "small", "seed": None, "keep_ratio": 0.7, "prune_method": None},
                             {"image_sft.epochs": 2, "prune.keep_ratio": 0.3})
    assert settings == {"image_sft.epochs": 2, "prune.keep_ratio": 0.7, "model.preset": "small"}
    assert set(SHORTCUTS.values()) <= {"model.preset", "seed", "prune.keep_ratio", "prune.method"}


def test_set_options_parse_into_dotted_settings() -> None:
    assert parse_overrides(["image_sft.epochs=5", "score.ray.num_actors=0", "prune.protected_subsets=[text]"]) == {
        "image_sft.epochs": 5, "score.ray.num_actors": 0, "prune.protected_subsets": ["text"]}
    for bad in ("image_sft.epochs", "=5", ".x=1", "a..b=1"):
        with pytest.raises(ValueError, match=r"expected KEY\[\.FIELD\.\.\.\]=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_overrides(["image_sft.lr={a: [1"])


def test_the_stages_are_read_again_when_dvc_yaml_or_params_change(tmp_path: Path) -> None:
    """A run reads the stage table before and after every stage (kept between reads), and its own params can add
    stages (`peers`) or dvc.yaml can move a path: each change is seen at the next read."""
    from dvc.repo import Repo

    from tasks.dvc_stages import out_paths, output_dir

    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    Repo.init(str(tmp_path), no_scm=True).close()
    order, _ = stage_graph(tmp_path)
    assert "peer@llava" not in order
    assert output_dir(tmp_path, "eval") == tmp_path.resolve() / "runs/eval"

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "peers": ["llava"]}))
    assert "peer@llava" in stage_graph(tmp_path)[0]
    assert out_paths(tmp_path, "peer@llava")
    dvc_yaml = (tmp_path / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(dvc_yaml.replace("eval: runs/eval\n", "eval: runs/evaluation\n", 1))
    assert output_dir(tmp_path, "eval") == tmp_path.resolve() / "runs/evaluation"
    with pytest.raises(ValueError, match="'nonsense' is not a stage of"):
        out_paths(tmp_path, "nonsense")


def test_a_stages_threads_follow_from_what_a_full_run_with_these_params_computes(tmp_path: Path) -> None:
    """From scratch: every stage of dvc.yaml, so a partial run keeps the full run's shares. With a released
    checkpoint to adapt, the imported chain alone: the from-scratch stages never run beside it."""
    from dvc.repo import Repo

    from flows.pipeline import thread_graph
    from tasks.stage_task import stage_threads

    released, tmp_path = tmp_path / "released", tmp_path / "project"
    released.mkdir()
    tmp_path.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    Repo.init(str(tmp_path), no_scm=True).close()
    partial = plan(tmp_path, ["projector_init"])
    graph = thread_graph(tmp_path, partial, None)
    assert set(graph) == set(stage_graph(tmp_path)[0])
    assert stage_threads(graph, 2, 2)["projector_init"] == 1, "scoring could run beside it in a full run"

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "init_checkpoints": {"rel": str(released)}}))
    targets = ["eval_imported@rel", "eval_quantized_imported@rel"]
    graph = thread_graph(tmp_path, plan(tmp_path, targets), targets)
    assert "projector_init" not in graph and "finetune_imported@rel" in graph
    threads = stage_threads(graph, 2, 2)
    assert threads["finetune_imported@rel"] is None, "nothing of the imported chain's run computes beside it"
    assert threads["eval_imported@rel"] == threads["quantize_imported@rel"] == 1
    # a partial run outside the chain still gets its stages' threads
    assert "projector_init" in thread_graph(tmp_path, plan(tmp_path, ["projector_init"]), targets)
