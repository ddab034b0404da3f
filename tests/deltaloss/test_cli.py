"""The `nvila score` / `nvila prune` commands: help text, the shipped params load, prune runs from a params file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from nvila_model.deltaloss import cli
from nvila_model.deltaloss.config import RayConfig, ScoreConfig
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


def test_shipped_params_load():
    assert load_config("score", REPO / "params.yaml").ray.num_actors >= 0
    assert 0 < load_config("prune", REPO / "params.yaml").keep_ratio <= 1


def test_unknown_key_is_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"score": {"ray": {"actors": 2}}}))
    with pytest.raises(ValueError, match=r"score\.ray\.actors: unknown key"):
        load_config("score", tmp_path / "params.yaml")


def test_prune_command_runs_from_params(colour_corpus, tmp_path):
    from nvila_model.deltaloss.stage import run_score

    scores = run_score(ScoreConfig(small_checkpoint=str(colour_corpus / "small"),
                                   large_checkpoint=str(colour_corpus / "large"), ray=RayConfig(num_actors=0)),
                       data=colour_corpus, out=tmp_path / "s", scorers=tmp_path / "scorers", tokenizer=tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prune": {"keep_ratio": 0.5}}))
    result = CliRunner().invoke(_app(), ["prune", "--params", str(tmp_path / "params.yaml"), "--data",
                                         str(colour_corpus), "--scores", str(scores), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["keep_ratio"] == 0.5
    assert json.loads((tmp_path / "scorers" / "scorers.json").read_text())["bootstrap"] is False


def test_a_missing_scorer_checkpoint_is_one_clear_error_before_ray(colour_corpus, tmp_path):
    from nvila_model.deltaloss.stage import run_score

    cfg = ScoreConfig(small_checkpoint=str(tmp_path / "missing"), large_checkpoint=str(colour_corpus / "large"))
    with pytest.raises(ValueError, match=r"missing: not an NVILA checkpoint \(no config.json\)"):
        # ray.num_actors is 2: without the up-front check this was a Ray ActorDiedError
        run_score(cfg, data=colour_corpus, out=tmp_path / "s", scorers=tmp_path / "scorers", tokenizer=tmp_path)
