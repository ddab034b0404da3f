"""CLI commands `nvila tokenizer`, `nvila train STAGE` and `nvila eval`, registered by flows/cli.py."""

from __future__ import annotations

from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), help="params file")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("tokenizer")(tokenizer)
    app.command("train")(train)
    app.command("eval")(evaluate)


def tokenizer(params: Path = PARAMS) -> None:
    """Train the byte-level BPE tokenizer on the training text (`tokenizer` key)."""
    from nvila_model.data.registry import DatasetsConfig
    from nvila_model.params import load_config
    from nvila_model.train.config import ModelParams
    from nvila_model.train.tokenizer_stage import TokenizerConfig, run_tokenizer

    out = run_tokenizer(load_config("tokenizer", TokenizerConfig, params), load_config("model", ModelParams, params),
                        load_config("datasets", DatasetsConfig, params))
    typer.echo(f"wrote {out}")


def train(
    stage: str = typer.Argument(..., help="projector_init | vision_pretrain | token_pretrain | image_sft | video_sft"),
    params: Path = PARAMS,
    max_steps: int | None = typer.Option(None, help="override the stage's max_steps"),
    precision: str | None = typer.Option(None, help="override precision: auto | fp32 | bf16 | fp8"),
    out_dir: str | None = typer.Option(None, help="override the stage's output directory"),
    pruned_manifest: str | None = typer.Option(None, help="train only on the ids of this pruned manifest"),
) -> None:
    """Run one of the five training stages (its `params.yaml` key); resumes an interrupted run of it."""
    from nvila_model.data.registry import DatasetsConfig
    from nvila_model.params import load_config
    from nvila_model.train.config import STAGES, ModelParams, StageConfig
    from nvila_model.train.stage import run_stage

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    cfg = load_config(stage, StageConfig, params,
                      overrides={"max_steps": max_steps, "precision": precision, "out_dir": out_dir,
                                                        "pruned_manifest": pruned_manifest})
    out = run_stage(stage, cfg, load_config("model", ModelParams, params),
                    load_config("datasets", DatasetsConfig, params))
    typer.echo(f"wrote {out}")


def evaluate(
    params: Path = PARAMS,
    checkpoint: str | None = typer.Option(None, help="override the model directory to evaluate"),
    out_dir: str | None = typer.Option(None, help="override the output directory"),
    limit: int | None = typer.Option(None, help="evaluate at most this many test samples per subset"),
) -> None:
    """Generation-based accuracy per subset on the test splits, plus efficiency (`eval` key)."""
    from nvila_model.evaluate import EvalConfig, run_eval
    from nvila_model.params import load_config

    cfg = load_config("eval", EvalConfig, params,
                      overrides={"checkpoint": checkpoint, "out_dir": out_dir, "limit_per_subset": limit})
    metrics = run_eval(cfg)
    for key, value in metrics.items():
        typer.echo(f"{key:<32} {value:.4f}" if isinstance(value, float) else f"{key:<32} {value}")
