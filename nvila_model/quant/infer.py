"""One inference entry for a prompt with an optional image or video, on any model variant (fp32, bf16, quantized)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nvila_model.data.loader import LOAD_ERRORS, load_image, load_video
from nvila_model.quant.loading import load_variant


def prepare_prompt(processor: Any, prompt: str, image: str | Path | None = None,
                   video: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Encode a user prompt with its media (the marker is added when the prompt has none) for `generate()`."""
    if image is not None and video is not None:
        raise ValueError("give an image or a video, not both")
    images, frames = None, None
    for path, kind in ((image, "image"), (video, "video")):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path}: {kind} not found")
    try:
        if image is not None:
            images = [load_image(image)]
        if video is not None:
            frames = load_video(video, processor.video_frame_indices)
    except LOAD_ERRORS as exc:
        path = image if video is None else video
        raise ValueError(f"{path}: cannot decode it ({type(exc).__name__}: {exc})") from exc
    return processor.encode_prompt(prompt, images=images, video=frames)


@torch.inference_mode()
def generate_ids(model: Any, sample: dict[str, torch.Tensor], max_new_tokens: int = 32) -> torch.Tensor:
    """Greedy continuation ids (without the prompt) of one encoded sample."""
    device = next(model.parameters()).device
    input_ids = sample["input_ids"].unsqueeze(0).to(device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         pixel_values=sample["pixel_values"].to(device), media_layout=sample["media_layout"],
                         max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, input_ids.shape[1]:]


def run_infer(checkpoint: str | Path, prompt: str, variant: str = "auto", image: str | Path | None = None,
              video: str | Path | None = None, max_new_tokens: int = 32, num_threads: int = 2,
              device: str = "auto") -> str:
    """Load `variant` of `checkpoint` on `device` (auto: cuda when available) and answer `prompt` about the image
    or video."""
    torch.set_num_threads(num_threads)
    model, processor = load_variant(checkpoint, variant, device)
    sample = prepare_prompt(processor, prompt, image, video)
    return processor.decode(generate_ids(model, sample, max_new_tokens))

