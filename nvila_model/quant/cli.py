"""CLI commands `nvila quantize`, `nvila infer` and `nvila finetune`, registered on the main app by flows/cli.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), help="params file")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("quantize")(quantize)
    app.command("infer")(infer)
    app.command("finetune")(finetune)


def quantize(
    params: Path = PARAMS,
    checkpoint: str | None = typer.Option(None, help="override quantize.checkpoint (an NVILA checkpoint dir)"),
    output: str | None = typer.Option(None, help="override quantize.output"),
    calib_manifest: str | None = typer.Option(None, help="override quantize.calib_manifest (LLaVA JSON lines)"),
    alpha: float | None = typer.Option(None, help="override quantize.vision.alpha (SmoothQuant migration)"),
    group_size: int | None = typer.Option(None, help="override quantize.llm.group_size (AWQ)"),
    vision: bool | None = typer.Option(None, "--vision/--no-vision", help="W8A8 the vision tower"),
    llm: bool | None = typer.Option(None, "--llm/--no-llm", help="W4A16 (AWQ) the LLM"),
) -> None:
    """W8A8 SmoothQuant vision tower + AWQ W4A16 LLM (`quantize` key); writes a directory `load_quantized` reads."""
    from nvila_model.params import load_config
    from nvila_model.quant.config import QuantizeConfig
    from nvila_model.quant.quantize import run_quantize

    cfg = load_config("quantize", QuantizeConfig, params,
                      overrides={"checkpoint": checkpoint, "output": output, "calib_manifest": calib_manifest})
    vision_changes = {k: v for k, v in {"alpha": alpha, "enabled": vision}.items() if v is not None}
    llm_changes = {k: v for k, v in {"group_size": group_size, "enabled": llm}.items() if v is not None}
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **vision_changes),
                              llm=dataclasses.replace(cfg.llm, **llm_changes))
    out = run_quantize(cfg)
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
) -> None:
    """Answer a prompt about an image or a video with the fp32, bf16 or quantized model."""
    from nvila_model.quant.infer import run_infer

    typer.echo(run_infer(checkpoint, prompt, variant, image, video, max_new_tokens, threads))


def finetune(
    params: Path = PARAMS,
    mode: str | None = typer.Option(None, help="override finetune.mode: full | ln | lora | ln_lora | qlora | ln_qlora"),
    checkpoint: str | None = typer.Option(None, help="override finetune.checkpoint (any stage's NVILA checkpoint)"),
    data: str | None = typer.Option(None, help="override finetune.data (a LLaVA-format manifest)"),
    output: str | None = typer.Option(None, help="override finetune.output"),
    max_steps: int | None = typer.Option(None, help="override finetune.max_steps"),
) -> None:
    """Fine-tune a checkpoint on a LLaVA dataset (`finetune` key); exports the LoRA-merged model + meta.json."""
    from nvila_model.finetune.config import FinetuneConfig
    from nvila_model.finetune.run import run_finetune
    from nvila_model.params import load_config

    cfg = load_config("finetune", FinetuneConfig, params, overrides={
        "mode": mode, "checkpoint": checkpoint, "data": data, "output": output, "max_steps": max_steps})
    out = run_finetune(cfg)
    meta = json.loads((out / "meta.json").read_text())
    typer.echo(f"wrote {out}: mode {meta['mode']}, {meta['trainable_params']['total']} trainable params, "
               f"{meta['train_seconds']} s, peak {meta['peak_memory_bytes'] / 2**20:.1f} MiB")
