"""The LLaVA-format torch Dataset: lazy media decoding (PIL, decord), the processor, skip-and-log on bad records."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from decord import DECORDError, VideoReader, cpu
from PIL import Image

from ..video import frame_indices
from .manifest import default_media_root, media_paths, read_manifest, record_kind

log = logging.getLogger(__name__)
MAX_IMAGE_PIXELS = 16_000_000  # decompression-bomb guard applied before any pixel is decoded
LOAD_ERRORS = (OSError, ValueError, RuntimeError, DECORDError, av.FFmpegError, Image.DecompressionBombError)


def load_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one image fully as RGB; a missing, oversized or corrupt file raises with the path in the message."""
    with Image.open(path) as img:
        if img.width * img.height > max_pixels:
            raise ValueError(f"{path}: {img.width}x{img.height} exceeds the {max_pixels}-pixel limit")
        img.load()
        return img.convert("RGB")


def _read_with_pyav(path: Path, indices: list[int]) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: video has no frames")
    return np.stack([frames[min(i, len(frames) - 1)] for i in indices])


def load_video(path: str | Path, select: Callable[[int], list[int]]) -> np.ndarray:
    """uint8 frames [F, H, W, 3] at `select(total_frames)`, decoded with decord.

    decord 0.6.0 mis-strides a few frame widths (16, 24, 48, 72 px among even widths); those fall back to PyAV.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video not found")
    reader = VideoReader(str(path), ctx=cpu(0))
    indices = [int(i) for i in select(len(reader))]
    try:
        frames_FHW3 = reader.get_batch(indices).asnumpy()
    except DECORDError:
        log.debug("%s: decord could not batch-decode, using PyAV", path)
        return _read_with_pyav(path, indices)
    if frames_FHW3.ndim != 4 or frames_FHW3.shape[-1] != 3:
        return _read_with_pyav(path, indices)
    return frames_FHW3


def load_media(record: dict[str, Any], media_root: str | Path | None,
               select: Callable[[int], list[int]]) -> tuple[list[Image.Image], np.ndarray | None]:
    """The record's decoded images (possibly empty) and video frames (or None).

    A media path leaving `media_root` is refused with a `MediaPathError` before any file is opened."""
    kind = record_kind(record)
    paths = media_paths(record, media_root)
    if kind == "video":
        return [], load_video(paths[0], select)
    return [load_image(p) for p in paths], None


class LlavaDataset(torch.utils.data.Dataset):
    """Samples of a LLaVA manifest as the processor's per-sample dicts (plus `id`).

    `records` is a manifest path (media root defaults to `default_media_root`) or a list of records. Media are
    decoded lazily in `__getitem__`. A record that cannot be loaded yields `None` (the collators drop it), is logged
    with its reason and appended to `failures` (in the process that loaded it), so one bad file never stops training.
    With `substitute_failed=True` (training) the next loadable record stands in instead, so batches keep their size.
    Without a processor the raw `{id, conversations, images, video}` dict is returned.

    `cache_mb` keeps processed samples in memory, up to that many MiB of tensors (first come, first kept), so a
    training run of several epochs decodes, tiles and tokenizes each record once: on the tiny preset that work is
    about a sixth of a training step. The processing is deterministic, so a cached sample is the one `__getitem__`
    would build again. Each DataLoader worker process holds its own cache.
    """

    def __init__(self, records: list[dict[str, Any]] | str | Path, media_root: str | Path | None = None,
                 processor: Any = None, max_length: int | None = None, num_video_frames: int | None = None,
                 substitute_failed: bool = False, cache_mb: float = 0):
        if isinstance(records, str | Path):
            media_root = media_root if media_root is not None else default_media_root(records)
            records = read_manifest(records)
        self.records = list(records)
        self.media_root = Path(media_root) if media_root is not None else None
        self.processor = processor
        self.max_length = max_length
        self.num_video_frames = num_video_frames
        self.substitute_failed = substitute_failed
        self.failures: list[tuple[str, str]] = []
        self.cache_room = int(cache_mb * 2**20)  # bytes still free for cached samples
        self.cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def frame_indices(self, total_frames: int) -> list[int]:
        if self.num_video_frames is None and self.processor is not None:
            return self.processor.video_frame_indices(total_frames)
        return frame_indices(total_frames, self.num_video_frames or 8)

    def load_raw(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        images, video = load_media(record, self.media_root, self.frame_indices)
        return {"id": str(record.get("id", index)), "conversations": record["conversations"],
                "images": images, "video": video}

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.load_sample(index)
        if sample is None and self.substitute_failed:
            for offset in range(1, len(self.records)):
                sample = self.load_sample((index + offset) % len(self.records))
                if sample is not None:
                    break
        return sample

    def load_sample(self, index: int) -> dict[str, Any] | None:
        """The processed sample of record `index`, or None (logged, added to `failures`) if it cannot be loaded."""
        if index in self.cache:
            return self.cache[index]
        rid = str(self.records[index].get("id", index))
        try:
            raw = self.load_raw(index)
            if self.processor is None:
                return raw
            sample = self.processor.encode(raw["conversations"], images=raw["images"] or None, video=raw["video"])
        except (*LOAD_ERRORS, KeyError) as exc:
            return self._skip(rid, f"{type(exc).__name__}: {exc}")
        if self.max_length is not None and sample["input_ids"].shape[0] > self.max_length:
            return self._skip(rid, f"too_long: {sample['input_ids'].shape[0]} > {self.max_length} tokens")
        sample["id"] = rid
        if self.cache_room > 0:
            size = sum(v.nbytes for v in sample.values() if isinstance(v, torch.Tensor))
            if size <= self.cache_room:
                self.cache[index] = sample
                self.cache_room -= size
        return sample

    def _skip(self, rid: str, reason: str) -> None:
        log.warning("skipping record %s: %s", rid, reason)
        self.failures.append((rid, reason))
        return None
