"""Dataset registry (entries, subsets, repeat factors, mixtures), the shipped params keys, and the `data` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from nvila_model.data.cli import register
from nvila_model.data.config import DatasetsConfig, GenerateConfig, subset_configs
from nvila_model.data.manifest import read_manifest
from nvila_model.data.registry import DatasetRegistry, repeat_records
from nvila_model.params import load_params

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_shipped_params_keys_load() -> None:
    configs = load_params(PARAMS, keys=["generate", "validate", "datasets"])
    assert len(subset_configs(configs["generate"])) == 9
    registry = DatasetRegistry(configs["datasets"])
    assert {"synth-image", "synth-video", "synth-all"} <= set(registry.names())


def test_repeat_factors() -> None:
    records = [{"id": i} for i in range(10)]
    assert len(repeat_records(records, 2.0)) == 20 and len(repeat_records(records, 1.5, seed=1)) == 15
    assert repeat_records(records, 0.3, seed=2) == repeat_records(records, 0.3, seed=2)
    with pytest.raises(ValueError, match="repeat factor"):
        repeat_records(records, -1)


def test_registry_resolves_entries_and_mixtures(corpus: Path) -> None:
    cfg = DatasetsConfig(
        entries={"img": {"manifest": str(corpus / "{split}.jsonl"), "subsets": ["counting"], "repeat": 2.0},
                 "vid": {"manifest": str(corpus / "{split}.jsonl"), "subsets": ["motion", "order"]}},
        mixtures={"both": {"img": 1.0, "vid": 0.5}})
    registry = DatasetRegistry(cfg)
    counting = registry.records("img", "val")
    assert {r["subset"] for r in counting} == {"counting"} and Path(counting[0]["image"]).is_file()
    train_img, train_vid = registry.records("img", "train"), registry.records("vid", "train")
    both = registry.records("both", "train")
    assert len(both) == len(train_img) + round(0.5 * len(train_vid))
    raw_counting = [r for r in read_manifest(corpus / "train.jsonl") if r["subset"] == "counting"]
    assert len(train_img) == 2 * len(raw_counting) and len(counting) == len(
        [r for r in read_manifest(corpus / "val.jsonl") if r["subset"] == "counting"])
    with pytest.raises(ValueError, match="not registered"):
        registry.records("nope", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        DatasetsConfig(mixtures={"m": {"missing": 1.0}})
    with pytest.raises(ValueError, match="Unexpected keyword argument"):
        DatasetsConfig(entries={"x": {"manifest": "a", "weight": 2}})
    pipeline = DatasetRegistry(DatasetsConfig(entries={"all": {}}), corpus)  # no manifest: the --data corpus
    assert len(pipeline.records("all", "test")) == len(read_manifest(corpus / "test.jsonl"))
    with pytest.raises(ValueError, match="no data folder was given"):
        DatasetRegistry(DatasetsConfig(entries={"all": {}})).records("all", "test")


def test_cli_generate_validate_and_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths, as dvc.yaml runs them
    app = typer.Typer()
    register(app)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generate": {"scale": 0.02, "seed": 5, "subsets": {
        name: {"enabled": name == "counting"} for name in subset_configs(GenerateConfig())}}, "validate": {},
        "model": {"preset": "tiny"}}))
    runner = CliRunner()
    for cmd in ("generate", "validate", "datasets"):
        assert runner.invoke(app, ["data", cmd, "--help"]).exit_code == 0
    result = runner.invoke(app, ["data", "generate", "--params", str(params), "--out", "raw"])
    assert result.exit_code == 0, result.output
    assert "counting" in result.output and (tmp_path / "raw" / "train.jsonl").is_file()
    result = runner.invoke(app, ["data", "validate", "--params", str(params), "--raw", "raw", "--out", "validated"])
    assert result.exit_code == 0, result.output
    assert "quarantined 0" in result.output
    assert (tmp_path / "validated" / "data_docs" / "index.html").is_file()
    bad = runner.invoke(app, ["data", "generate", "--params", str(tmp_path / "missing.yaml"), "--out", "x"])
    assert bad.exit_code != 0 and "params file not found" in str(bad.exception)
