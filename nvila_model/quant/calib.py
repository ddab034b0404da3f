"""Calibration data for quantization: LLaVA manifest records -> encoded samples, vision tiles and LLM text tokens."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import media_root_for, read_manifest, record_kind


def calibration_samples(manifest: str | Path, media_root: str | Path | None, processor: Any, num_samples: int,
                        seed: int = 0, need_media: bool = False) -> list[dict[str, torch.Tensor]]:
    """`num_samples` encoded records drawn with `seed` (only image/video records when `need_media`), loaded by the
    data package's `LlavaDataset`; records it cannot load are skipped and logged there."""
    records = read_manifest(manifest)
    if need_media:
        records = [r for r in records if record_kind(r) != "text"]
    if not records:
        raise ValueError(f"{manifest}: no {'image or video ' if need_media else ''}records to calibrate on")
    chosen = random.Random(seed).sample(records, min(num_samples, len(records)))
    root = media_root_for(manifest, media_root or None)
    dataset = LlavaDataset(chosen, media_root=root, processor=processor)
    samples = [s for s in (dataset[i] for i in range(len(dataset))) if s is not None]
    if not samples:
        raise ValueError(f"{manifest}: none of the {len(chosen)} calibration records could be loaded")
    return samples


def media_kinds(samples: list[dict[str, torch.Tensor]]) -> dict[str, int]:
    """How many calibration tiles came from images and from video frames (for meta.json)."""
    counts = {"image_tiles": 0, "video_frames": 0}
    for sample in samples:
        frames = sum(row[3] for row in sample["media_layout"].tolist() if row[0] == 2)
        counts["video_frames"] += frames
        counts["image_tiles"] += int(sample["pixel_values"].shape[0]) - frames
    return counts


def text_token_lists(samples: list[dict[str, torch.Tensor]], media_token_ids: tuple[int, int]) -> list[list[int]]:
    """The samples' ChatML token ids with the media placeholders removed: the pipeline's own text, for AWQ."""
    media = torch.tensor(media_token_ids)
    return [s["input_ids"][~torch.isin(s["input_ids"], media)].tolist() for s in samples]


@torch.no_grad()
def run_vision(model: Any, samples: list[dict[str, torch.Tensor]], max_tiles: int = 64) -> int:
    """Push every sample's tiles through the model's vision features in chunks; returns the tile count."""
    tiles = [s["pixel_values"] for s in samples if s["pixel_values"].shape[0]]
    if not tiles:
        raise ValueError("calibration samples hold no image or video tiles")
    pixels = torch.cat(tiles)
    device = next(model.parameters()).device
    for chunk in pixels.split(max_tiles):
        model.vision_features(chunk.to(device))
    return int(pixels.shape[0])
