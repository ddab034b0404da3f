"""CLI commands `nvila tokenizer`, `nvila train STAGE` and `nvila eval`, registered by flows/cli.py.

Settings come from the params file; every input and output path is an option, given by `dvc.yaml`.
"""

from __future__ import annotations

from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file")
DATA = typer.Option(..., "--data", help="the validated corpus folder ({split}.jsonl + media)")
OUT = typer.Option(..., "--out", help="output folder")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("tokenizer")(tokenizer)
    app.command("train")(train)
    app.command("eval")(evaluate)


def tokenizer(data: Path = DATA, out: Path = OUT, params: Path = PARAMS) -> None:
    """Train the byte-level BPE tokenizer on the training text (`tokenizer` key)."""
    from nvila_model.params import load_params
    from nvila_model.train.tokenizer_stage import run_tokenizer

    configs = load_params(params, keys=["tokenizer", "model", "datasets"])
    typer.echo(f"wrote {run_tokenizer(configs['tokenizer'], configs['model'], configs['datasets'], data, out)}")


def train(
    stage: str = typer.Argument(..., help="projector_init | vision_pretrain | token_pretrain | image_sft | video_sft"),
    data: Path | None = typer.Option(None, "--data", help="the validated corpus folder (for datasets that do not "
                                     "name their own manifest)"),
    out: Path = OUT,
    init: Path | None = typer.Option(None, "--init", help="the previous stage's output (all stages but the first)"),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="the tokenizer folder (first stage)"),
    pruned: Path | None = typer.Option(None, "--pruned", help="a prune output: train only on its subset"),
    params: Path = PARAMS,
) -> None:
    """Run one of the five training stages (its params key); resumes an interrupted run of it."""
    from nvila_model.params import TRAIN_STAGES as STAGES
    from nvila_model.params import load_params
    from nvila_model.tracking import current_tracker
    from nvila_model.train.stage import run_stage

    if stage not in STAGES:
        raise ValueError(f"train: unknown stage {stage!r}; choose one of {list(STAGES)}")
    configs = load_params(params, keys=[stage, "model", "datasets"])
    out = run_stage(stage, configs[stage], configs["model"], configs["datasets"], data=data, out=out, init=init,
                    tokenizer=tokenizer, pruned=pruned, tracker=current_tracker())
    typer.echo(f"wrote {out}")


def evaluate(
    data: Path = DATA,
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the model folder to evaluate"),
    out: Path = OUT,
    params: Path = PARAMS,
) -> None:
    """Generation-based accuracy per subset on the test split, plus efficiency (`eval` key)."""
    from nvila_model.evaluate import run_eval
    from nvila_model.params import load_params

    configs = load_params(params, keys=["eval", "datasets"])
    metrics = run_eval(configs["eval"], configs["datasets"], data=data, checkpoint=checkpoint, out=out)
    for key, value in metrics.items():
        typer.echo(f"{key:<32} {value:.4f}" if isinstance(value, float) else f"{key:<32} {value}")
