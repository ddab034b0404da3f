"""End to end, shrunk: a released NVILA checkpoint (official layout, written by the test) is imported as a stage of
its own, fine-tuned, quantized, evaluated and registered; the from-scratch stages are skipped."""

from __future__ import annotations

import json

import pytest

from tests.orchestration.conftest import git_project, point_env_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
ADAPT = ("import", "finetune_imported", "quantize_imported", "eval_imported", "eval_quantized_imported")


def test_pipeline_adapts_a_released_checkpoint(tmp_path, monkeypatch, prefect_server) -> None:
    from mlflow.tracking import MlflowClient

    from flows.pipeline import nvila_pipeline
    from tests.checkpoint.official_fixture import write_official

    released = write_official(tmp_path / "NVILA-tiny")
    # The fixture's LLM is 48 wide, which no AWQ group size (32, 64, 128) divides: the W8A8 vision tower only.
    root = git_project(tmp_path / "project", {"quantize": {"llm": {"enabled": False}}})
    point_env_at(monkeypatch, root)
    result = nvila_pipeline(init_checkpoint=str(released))

    ran = list(result["stages"])
    assert ran == ["generate", "validate", *(f"{stage}@NVILA-tiny" for stage in ADAPT)]
    assert not {"projector_init", "token_pretrain", "video_sft", "eval"} & set(ran), "no from-scratch stage"
    metrics = result["metrics"]
    assert set(metrics) == {"NVILA-tiny", "NVILA-tiny-quantized"}
    assert 0 <= metrics["NVILA-tiny"]["acc_mean"] <= 1 and metrics["NVILA-tiny-quantized"]["num_samples"] > 0

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias("nvila-NVILA-tiny", "best")
    assert version.run_id == result["mlflow_run_id"]
    assert client.get_latest_versions("nvila-NVILA-tiny-quantized")
    import dvc.api

    rev = next(e for e in dvc.api.exp_show(repo=str(root)) if e.get("Experiment") == result["experiment"])["rev"]
    meta = json.loads(dvc.api.read("runs/imported/NVILA-tiny/model/meta.json", repo=str(root), rev=rev))
    assert meta["kind"] == "imported_official" and meta["source"] == str(released)
    finetuned = json.loads(dvc.api.read("runs/imported/NVILA-tiny/finetune/meta.json", repo=str(root), rev=rev))
    assert finetuned["source_checkpoint"].endswith("runs/imported/NVILA-tiny/model") and finetuned["steps"] == 2
