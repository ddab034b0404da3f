"""The `nvila score` / `nvila prune` commands: help text, the shipped params load, prune runs from a params file."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from nvila_model.deltaloss import cli
from nvila_model.deltaloss.config import PruneConfig, ScoreConfig
from nvila_model.params import load_config

REPO = Path(__file__).resolve().parents[2]


def _app() -> typer.Typer:
    app = typer.Typer()
    cli.register(app)
    return app


@pytest.mark.parametrize("command", ["score", "prune"])
def test_help(command):
    result = CliRunner().invoke(_app(), [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "params" in result.output


def test_shipped_params_load_and_validate():
    load_config("score", ScoreConfig, REPO / "params.yaml").validate()
    load_config("prune", PruneConfig, REPO / "params.yaml").validate()


def test_unknown_key_is_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"score": {"ray": {"actors": 2}}}))
    with pytest.raises(ValueError, match="unknown key"):
        load_config("score", ScoreConfig, tmp_path / "params.yaml")


def test_prune_command_runs_from_params(colour_corpus, tmp_path):
    from nvila_model.deltaloss.config import RayConfig
    from nvila_model.deltaloss.stage import run_score

    scores = run_score(ScoreConfig(manifest=str(colour_corpus / "train.jsonl"), out_dir=str(tmp_path / "s"),
                                   small_checkpoint=str(colour_corpus / "small"),
                                   large_checkpoint=str(colour_corpus / "large"), ray=RayConfig(num_actors=0)))
    params = {"prune": {"scores": str(scores / "scores.parquet"), "manifest": str(colour_corpus / "train.jsonl"),
                        "out_dir": str(tmp_path / "p"), "keep_ratios": [0.7]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(_app(), ["prune", "--params", str(tmp_path / "params.yaml"), "--keep-ratio", "0.5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if p.is_dir()) == [
        "deltaloss-0.5", "deltaloss-0.7", "random-0.5", "random-0.7"]


def test_a_missing_scorer_checkpoint_is_one_clear_error_before_ray(colour_corpus, tmp_path):
    from nvila_model.deltaloss.stage import run_score

    cfg = ScoreConfig(manifest=str(colour_corpus / "train.jsonl"), out_dir=str(tmp_path / "s"),
                      small_checkpoint=str(tmp_path / "missing"), large_checkpoint=str(colour_corpus / "large"))
    with pytest.raises(ValueError, match=r"missing: not an NVILA checkpoint \(no config.json\)"):
        run_score(cfg)  # ray.num_actors is 2: without the up-front check this was a Ray ActorDiedError
