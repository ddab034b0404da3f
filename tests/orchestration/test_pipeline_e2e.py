"""End to end, shrunk: pipeline runs are DVC experiments, restored from DVC's cache when unchanged, tracked in MLflow.

One project for the module (a committed clone with a shrunk params.yaml), so the later runs find the first run's
stages in the DVC run-cache, as a user's second run would:
1. a full run applied to the working tree: `dvc status` clean, the experiment in `dvc exp show`, every plot;
2. keep ratio 0.5, up to eval: everything upstream of prune restored (no training step ran), SFT on the 0.5 subset;
3. a partial run: tagged partial, the latest evaluation artifact left alone;
4. the stages up to `score` and `projector_init` again with DVC's run-cache set aside, so they are computed anew
   (three trainings through the one training path, and Ray scoring): the same weights and scores, bit for bit;
5. two runs at once from the command line, keep 0.5 and `--set prune.keep_ratio=0.7`: both complete, each
   experiment holds its own subset and metrics;
and every stage command reads only code and params its dvc.yaml stage lists.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.orchestration.conftest import git_project, point_env_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
# The Tracker interface every `nvila` command loads (it only forwards logs, it never shapes an output), and the
# command-line modules (argument parsing) are not code deps of a stage.
TRACKER = "nvila_model/tracking.py"
UPSTREAM_OF_PRUNE = ("generate", "validate", "tokenizer", "score", "projector_init", "vision_pretrain",
                     "token_pretrain")
RECOMPUTED = ("runs/scorers/small/model.safetensors", "runs/scorers/large/model.safetensors",
              "runs/projector_init/model.safetensors", "data/scores/scores.parquet")


def _dvc(args: list[str], root: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def _experiments(root: Path) -> dict[str, dict]:
    """name -> {params, metrics} of every experiment `dvc exp show` lists."""
    found = {}
    for commit in json.loads(_dvc(["exp", "show", "--json"], root)):
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                found[rev["name"]] = {"rev": rev["rev"], "params": data["params"]["params.yaml"]["data"],
                                      "metrics": {k: v.get("data") for k, v in data["metrics"].items()}}
    return found


def _read(root: Path, path: str, rev: str) -> dict:
    import dvc.api

    return json.loads(dvc.api.read(path, repo=str(root), rev=rev))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> dict:
    """The four in-process runs of the module's project (under the session's Prefect test server)."""
    from flows.pipeline import nvila_pipeline
    from tests.orchestration.conftest import _latest_artifact

    root = git_project(tmp_path_factory.mktemp("e2e") / "project")
    with pytest.MonkeyPatch.context() as patch:
        point_env_at(patch, root)
        patch.setenv("NVILA_TRACE", str(root / "trace.jsonl"))
        first = nvila_pipeline(apply=True)
        status = _dvc(["status"], root)
        second = nvila_pipeline(keep_ratio=0.5, stages=["eval"])
        artifact = _latest_artifact("nvila-eval")
        partial = nvila_pipeline(stages=["validate"])
        after_partial = _latest_artifact("nvila-eval")
        # DVC's run-cache and the applied dvc.lock (a run's workspace takes the uncommitted files) set aside, so
        # every stage of this run is computed again instead of restored; put back after, so the later runs of the
        # module still restore what the first run computed
        aside = tmp_path_factory.mktemp("aside")
        kept = [root / ".dvc" / "cache" / "runs", root / "dvc.lock"]
        for path in kept:
            shutil.move(path, aside / path.name)
        rerun = nvila_pipeline(stages=["score", "projector_init"])
        shutil.rmtree(kept[0])
        for path in kept:
            shutil.move(aside / path.name, path)
    return {"root": root, "first": first, "status": status, "second": second, "artifact": artifact,
            "partial": partial, "after_partial": after_partial, "rerun": rerun}


def test_a_run_is_an_experiment_and_leaves_the_working_tree_reproducible(runs):
    root, first = runs["root"], runs["first"]
    assert first["stages"] and set(first["stages"].values()) == {"ran"}, "a fresh project computes every stage"
    assert first["applied"] and "up to date" in runs["status"]
    assert "Running stage" not in _dvc(["repro", "--dry"], root)
    exps = _experiments(root)
    assert exps[first["experiment"]]["params"]["prune"]["keep_ratio"] == 0.9
    assert 0 <= exps[first["experiment"]]["metrics"]["runs/eval/metrics.json"]["acc_mean"] <= 1
    plots = json.loads(_dvc(["plots", "show", "--json"], root))
    assert not plots.get("errors") and len([p for p in plots["data"] if p.endswith("log_history.json")]) == 5
    assert (root / "runs/eval/metrics.json").is_file() and (root / "dvc.lock").is_file()


def test_independent_stages_ran_side_by_side_on_their_share_of_the_cores(runs):
    from mlflow.tracking import MlflowClient

    from tasks.env import cpu_cores

    root, first = runs["root"], runs["first"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.get_run(first["mlflow_run_id"]).info
    stages = {r.info.run_name: r.info for r in client.search_runs(
        [parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'")}
    score, pretrain = stages["score"], stages["projector_init"]
    assert score.start_time < pretrain.end_time and pretrain.start_time < score.end_time, "scoring beside pre-training"
    assert stages["tokenizer"].end_time <= min(score.start_time, pretrain.start_time)
    assert max(stages["prune"].end_time, stages["token_pretrain"].end_time) <= stages["image_sft"].start_time
    rev = _experiments(root)[first["experiment"]]["rev"]
    threads = {stage: _read(root, f"runs/{stage}/meta.json", rev)["cpu_threads"] for stage in
               ("projector_init", "token_pretrain", "image_sft")}
    assert threads["projector_init"] == threads["token_pretrain"] == max(1, cpu_cores() // 2)
    assert threads["image_sft"] >= threads["projector_init"], "a stage that runs alone has every core"


def test_a_second_run_restores_what_is_unchanged_and_trains_on_its_own_subset(runs):
    root, first, second = runs["root"], runs["first"], runs["second"]
    assert [s for s, how in second["stages"].items() if how == "restored"] == list(UPSTREAM_OF_PRUNE)
    assert [s for s, how in second["stages"].items() if how == "ran"] == ["prune", "image_sft", "video_sft", "eval"]
    exp = _experiments(root)[second["experiment"]]
    assert exp["params"]["prune"]["keep_ratio"] == 0.5
    pruned = _read(root, "data/pruned/summary.json", exp["rev"])
    assert pruned["keep_ratio"] == 0.5
    assert second["defects_removed"] == pruned["defects_removed_share"] and set(second["defects_removed"]) == {
        "duplicate", "noise"}, "the run reports the share of each injected defect its pruning removed"
    meta = _read(root, "runs/image_sft/meta.json", exp["rev"])
    assert meta["inputs"]["pruned"]["path"] == "data/pruned/train.jsonl"
    full = _read(root, "runs/image_sft/meta.json", _experiments(root)[first["experiment"]]["rev"])
    assert meta["num_train_records"] == pytest.approx(full["num_train_records"] * 0.5 / 0.9, abs=10)
    assert second["train_cost"]["image_sft"]["train_records"] == meta["num_train_records"]
    answers = second["answers"]["trained"]  # the evaluation's answers, for paired comparisons between runs
    assert len(answers) == second["metrics"]["trained"]["num_samples"] and set(second["answers"]) == {"trained"}
    by_subset = {s: [a["correct"] for a in answers if a["subset"] == s] for s in {a["subset"] for a in answers}}
    assert sum(sum(c) / len(c) for c in by_subset.values()) / len(by_subset) == pytest.approx(
        second["metrics"]["trained"]["acc_mean"], abs=1e-5)
    # `dvc exp apply` of the first run, then `dvc repro`: nothing to recompute (restored from the cache)
    _dvc(["exp", "apply", first["experiment"]], root)
    assert "Running stage" not in _dvc(["repro"], root)


def test_compare_reads_two_experiments_answers(runs, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    root, first, second = runs["root"], runs["first"], runs["second"]
    point_env_at(monkeypatch, root)
    result = CliRunner().invoke(app, ["pipeline", "compare", second["experiment"], first["experiment"]])
    assert result.exit_code == 0, result.output
    a, b = second["metrics"]["trained"]["acc_mean"], first["metrics"]["trained"]["acc_mean"]
    assert f"| mean | {100 * a:.1f} | {100 * b:.1f} | {100 * (a - b):+.1f} ± " in result.output
    assert f"A: {second['experiment']}, B: {first['experiment']} (eval)" in result.output


def test_mlflow_records_each_run_with_its_effective_params_and_where_restored_stages_came_from(runs):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs['root'] / 'mlflow.db'}")
    mlflow.set_tracking_uri(client.tracking_uri)
    parents = mlflow.search_runs(experiment_names=["nvila"], filter_string="tags.kind = 'pipeline'")  # README
    assert len(parents) == 4
    by_id = {row["run_id"]: row for _, row in parents.iterrows()}
    first, second = by_id[runs["first"]["mlflow_run_id"]], by_id[runs["second"]["mlflow_run_id"]]
    assert first["params.keep_ratio"] == "0.9" and second["params.keep_ratio"] == "0.5"
    assert second["params.prune.keep_ratio"] == "0.5" and second["params.preset"] == "tiny"
    assert second["tags.dvc.experiment"] == runs["second"]["experiment"] and second["tags.git.revision"]
    assert any(k.startswith("tags.dvc.runs/") for k in second.index) and second["tags.partial"] == "true"
    assert "metrics.trained.acc_mean" in second and second["status"] == "FINISHED"
    children = {r.info.run_name: r for r in client.search_runs(
        [first["experiment_id"]], f"tags.mlflow.parentRunId = '{second['run_id']}'")}
    first_children = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [first["experiment_id"]], f"tags.mlflow.parentRunId = '{first['run_id']}'")}
    for stage in UPSTREAM_OF_PRUNE:
        tags = children[stage].data.tags
        assert tags["cached"] == "true" and tags["cached_from"] == first_children[stage], stage
        assert "loss" not in children[stage].data.metrics, f"{stage}: restored, no training step ran"
    assert children["image_sft"].data.tags["cached"] == "false" and "loss" in children["image_sft"].data.metrics
    assert client.get_model_version_by_alias("nvila-tiny", "best").run_id in by_id


def test_a_partial_run_is_tagged_and_leaves_the_evaluation_artifact_alone(runs):
    assert runs["partial"]["stages"] == {"generate": "restored", "validate": "restored"}
    assert runs["after_partial"] == runs["artifact"] and "NVILA pipeline: evaluation" in runs["artifact"]
    assert runs["second"]["experiment"] in runs["artifact"]


def test_a_rerun_reproduces_the_weights_and_scores_bit_for_bit(runs):
    import dvc.api

    root, first, rerun = runs["root"], runs["first"], runs["rerun"]
    assert rerun["stages"] == dict.fromkeys(("generate", "validate", "tokenizer", "score", "projector_init"), "ran")
    revs = {name: exp["rev"] for name, exp in _experiments(root).items()}
    corpus = [yaml.safe_load(dvc.api.read("dvc.lock", repo=str(root), rev=revs[run["experiment"]]))
              ["stages"]["generate"]["outs"] for run in (first, rerun)]
    assert corpus[0] == corpus[1], "the generated corpus differs between two runs of the same pipeline"
    for path in RECOMPUTED:
        blobs = [dvc.api.read(path, repo=str(root), rev=revs[run["experiment"]], mode="rb") for run in (first, rerun)]
        assert blobs[0] == blobs[1], f"{path} differs between two runs of the same pipeline"


def test_every_stage_command_reads_only_what_its_dvc_stage_lists(runs):
    from dvc.repo import Repo

    root = runs["root"]
    with Repo(str(root)) as repo:
        stages = {tuple(shlex.split(s.cmd)[1:]): s for s in repo.index.stages}
    traced = [json.loads(line) for line in (root / "trace.jsonl").read_text().splitlines()]
    seen = set()
    for record in traced:
        stage = stages.get(tuple(record["argv"]))
        if stage is None:
            continue
        seen.add(stage.name)
        deps = [str(Path(d.def_path)) for d in stage.deps]
        for module in record["modules"]:
            if not module.startswith("nvila_model/") or module.endswith(("__init__.py", "/cli.py", TRACKER)):
                continue
            assert any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps), (
                f"{stage.name} runs {module}, which its dvc.yaml deps do not list")
        params = {key for entry in stage.params for key in entry.params}
        assert set(record["keys"]) <= params, f"{stage.name} reads params {set(record['keys']) - params} not listed"
    assert seen == {s.name for s in stages.values()}, "every stage ran at least once under the trace"


def test_two_runs_at_once_keep_their_own_subsets(runs):
    root = runs["root"]
    env = {**os.environ, "NVILA_PROJECT_DIR": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": str(root)}
    nvila = [sys.executable, "-m", "flows.cli", "pipeline", "run", "--stages", "eval", "--no-apply"]
    procs = [subprocess.Popen([*nvila, *extra], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for extra in (["--keep-ratio", "0.5", "--prune-method", "random"],
                                                       ["--set", "prune.keep_ratio=0.7"])]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    exps = _experiments(root)
    new = [e for name, e in exps.items()
           if name not in {runs[run]["experiment"] for run in ("first", "second", "partial", "rerun")}]
    assert sorted(e["params"]["prune"]["keep_ratio"] for e in new) == [0.5, 0.7]
    for exp in new:
        summary = _read(root, "data/pruned/summary.json", exp["rev"])
        assert summary["keep_ratio"] == exp["params"]["prune"]["keep_ratio"]
        assert summary["method"] == exp["params"]["prune"]["method"]
        assert exp["metrics"]["runs/eval/metrics.json"]["num_samples"] > 0
    assert "dvc status" not in outputs[0] and not list((root / ".nvila" / "workspaces").iterdir())
