"""CLI commands `nvila quantize`, `nvila infer` and `nvila finetune`, registered on the main app by flows/cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file")
DATA = typer.Option(..., "--data", help="the validated corpus folder (its train.jsonl)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("quantize")(quantize)
    app.command("infer")(infer)
    app.command("finetune")(finetune)


def quantize(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the NVILA checkpoint folder to quantize"),
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", help="the quantized model folder to write"),
    params: Path = PARAMS,
) -> None:
    """W8A8 SmoothQuant vision tower + AWQ W4A16 LLM (`quantize` key), calibrated on the corpus's train split."""
    from nvila_model.deltaloss.config import TRAIN_MANIFEST
    from nvila_model.params import load_config
    from nvila_model.quant.quantize import run_quantize
    from nvila_model.tracking import current_tracker

    out = run_quantize(load_config("quantize", params), checkpoint, out, data / TRAIN_MANIFEST,
                       tracker=current_tracker())
    sizes = json.loads((out / "meta.json").read_text())["sizes"]["disk"]
    typer.echo(f"wrote {out} ({sizes['before_bytes'] / 2**20:.2f} MiB -> {sizes['after_bytes'] / 2**20:.2f} MiB)")


def infer(
    checkpoint: Path = typer.Option(..., help="an NVILA checkpoint (fp32/bf16) or a quantized directory"),
    prompt: str = typer.Option(..., help="the question"),
    image: Path | None = typer.Option(None, help="an image file"),
    video: Path | None = typer.Option(None, help="a video file"),
    variant: str = typer.Option("auto", help="auto (quantized for a `nvila quantize` directory, else fp32) | fp32 | "
                                             "bf16 | quantized"),
    max_new_tokens: int = typer.Option(32, help="greedy decoding length limit"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    device: str = typer.Option("auto", help="auto (cuda when available) | cpu | cuda[:N]"),
) -> None:
    """Answer a prompt about an image or a video with the fp32, bf16 or quantized model."""
    from nvila_model.quant.infer import run_infer

    typer.echo(run_infer(checkpoint, prompt, variant, image, video, max_new_tokens, threads, device))


def finetune(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the NVILA checkpoint folder to fine-tune"),
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", help="the fine-tuned model folder to write"),
    params: Path = PARAMS,
) -> None:
    """Fine-tune a checkpoint on the corpus's train split (`finetune` key); exports the LoRA-merged model."""
    from nvila_model.deltaloss.config import TRAIN_MANIFEST
    from nvila_model.finetune.run import run_finetune
    from nvila_model.params import load_config
    from nvila_model.tracking import current_tracker

    out = run_finetune(load_config("finetune", params), checkpoint, data / TRAIN_MANIFEST, out,
                       tracker=current_tracker())
    meta = json.loads((out / "meta.json").read_text())
    typer.echo(f"wrote {out}: mode {meta['mode']}, {meta['trainable_params']['total']} trainable params, "
               f"{meta['train_seconds']} s, peak {meta['peak_memory_bytes'] / 2**20:.1f} MiB")
