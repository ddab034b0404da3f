"""CLI command `nvila peer train FAMILY` (the `peer@FAMILY` stage of dvc.yaml), registered by flows/cli.py."""

from __future__ import annotations

from pathlib import Path

import typer

peer_app = typer.Typer(help="The peer model (transformers' LLaVA + stock Trainer) NVILA is compared with.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `nvila peer ...` to the main app."""
    app.add_typer(peer_app, name="peer")


@peer_app.command("train")
def train(
    family: str = typer.Argument(..., help="the peer to train: llava (LlavaForConditionalGeneration)"),
    data: Path = typer.Option(..., "--data", help="the validated corpus folder ({split}.jsonl + media)"),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="the tokenizer folder (the one NVILA uses)"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params file"),
) -> None:
    """Train a peer from scratch on all the training data (`peer` key; sizes from the `model` preset; steps, when
    `peer.max_steps` is null, from the five NVILA stages' `max_steps`)."""
    from nvila_model.params import TRAIN_STAGES, load_params
    from nvila_model.peer.config import matched_steps
    from nvila_model.peer.train import run_peer_train
    from nvila_model.tracking import current_tracker

    configs = load_params(params, keys=["peer", "model", "datasets", *TRAIN_STAGES])
    peer = matched_steps(configs["peer"], configs)
    out = run_peer_train(family, peer, configs["model"], configs["datasets"], data=data,
                         tokenizer=tokenizer, out=out, tracker=current_tracker())
    typer.echo(f"wrote {out}")
