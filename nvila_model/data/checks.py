"""Per-record facts for validation: schema, media inside the root and existing, header sizes, real decoding, and
token counts (exact with a tokenizer, else a byte bound that can only over-count)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from decord import VideoReader, cpu
from PIL import Image

from ..media_tokens import num_image_tokens, num_video_tokens
from ..video import frame_indices
from .loader import LOAD_ERRORS, load_video
from .manifest import (
    MediaPathError,
    answers_nonempty,
    conversation_text,
    markers_match,
    media_paths,
    record_kind,
    schema_problem,
    turns_alternate,
)

log = logging.getLogger(__name__)
TokenCounter = Callable[[dict[str, Any], dict[str, Any]], int]


def _image_facts(paths: list[Path], max_pixels: int) -> dict[str, Any]:
    """Header sizes of every image, then a full decode of those within the pixel limit (bombs are not decoded)."""
    widths, heights, error = [], [], ""
    for path in paths:
        try:
            with Image.open(path) as img:
                widths.append(img.width)
                heights.append(img.height)
                if img.width * img.height <= max_pixels:
                    img.load()
        except (*LOAD_ERRORS, SyntaxError) as exc:
            error = error or f"{path.name}: {type(exc).__name__}: {exc}"
    if error and len(widths) < len(paths):  # the header itself was unreadable
        return {"decode_ok": False, "decode_error": error}
    return {"decode_ok": not error, "decode_error": error, "width": max(widths), "height": max(heights),
            "min_side": min(min(widths), min(heights)), "pixels": max(w * h for w, h in zip(widths, heights,
                                                                                              strict=True)),
            "sizes": list(zip(widths, heights, strict=True))}


def _video_facts(path: Path, num_frames: int) -> dict[str, Any]:
    try:
        total = len(VideoReader(str(path), ctx=cpu(0)))
        frames_FHW3 = load_video(path, lambda n: frame_indices(n, num_frames))
    except LOAD_ERRORS as exc:
        return {"decode_ok": False, "decode_error": f"{path.name}: {type(exc).__name__}: {exc}"}
    _, h, w, _ = frames_FHW3.shape
    return {"decode_ok": True, "decode_error": "", "frames": total, "width": w, "height": h,
            "min_side": min(w, h), "pixels": w * h, "sizes": [(w, h)]}


def record_facts(record: dict[str, Any], media_root: Path, max_pixels: int, num_frames: int,
                 count_tokens: TokenCounter | None = None) -> dict[str, Any]:
    """One dataframe row: everything the expectation suite checks about `record` (None where not applicable)."""
    facts: dict[str, Any] = {"id": str(record.get("id", "")), "subset": str(record.get("subset", "")),
                             "schema": schema_problem(record) or "", "kind": None, "media_inside_root": None,
                             "path_error": "", "media_exists": None, "decode_ok": None, "decode_error": "",
                             "width": None, "height": None, "min_side": None, "pixels": None, "frames": None,
                             "turns_alternate": None, "answers_nonempty": None, "markers_match": None,
                             "text_chars": None, "tokens": None}
    if facts["schema"]:
        return facts
    conv = record["conversations"]
    facts.update(kind=record_kind(record), turns_alternate=turns_alternate(conv),
                 answers_nonempty=answers_nonempty(conv), markers_match=markers_match(record),
                 text_chars=len(conversation_text(conv)))
    try:
        paths = media_paths(record, media_root)
    except MediaPathError as exc:  # never stat, open or decode a file outside the media root
        facts.update(media_inside_root=False, path_error=str(exc))
        return facts
    if paths:
        facts["media_inside_root"] = True
        facts["media_exists"] = all(p.is_file() for p in paths)
        if facts["media_exists"]:
            if facts["kind"] == "video":
                facts.update(_video_facts(paths[0], num_frames))
            else:
                facts.update(_image_facts(paths, max_pixels))
    if count_tokens is not None and facts["decode_ok"] is not False and facts["media_exists"] is not False:
        facts["tokens"] = int(count_tokens(record, facts))
    facts.pop("sizes", None)
    return facts


def make_token_counter(obj: Any, config: Any = None) -> tuple[TokenCounter, str]:
    """A `(record, facts) -> tokens` function and the name of its text method.

    Text tokens come from `obj`: an NVILA processor or a tokenizer (`encode` / `__call__` giving ids; exact), a plain
    `text -> count` callable, or None: the UTF-8 byte bound (`chatml_bytes`), which no byte-level BPE can exceed, so
    nothing over-long passes without a trained tokenizer. Media tokens are exact from the model `config` (a
    processor's own config wins): placeholders plus one newline per image or frame group, as the processor expands
    them. Without either config the count is text only."""
    if hasattr(obj, "num_image_tokens") and hasattr(obj, "tokenizer"):
        config = obj.config
        tokenizer = obj.tokenizer
        text, method = (lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])), "tokenizer"
    elif hasattr(obj, "encode"):
        text, method = (lambda t: len(obj.encode(t))), "tokenizer"
    elif callable(obj):
        text, method = (lambda t: int(obj(t))), "callable"
    elif obj is None:
        text, method = None, "utf8_bytes_bound"
    else:
        raise ValueError(f"cannot count tokens with a {type(obj).__name__}: need a processor, tokenizer or callable")
    system = getattr(config, "system_prompt", "You are a helpful assistant.")

    def count(record: dict[str, Any], facts: dict[str, Any]) -> int:
        conv = record["conversations"]
        n = chatml_bytes(conv, system) if text is None else text(_chatml(conv, system))
        return n + (media_tokens(config, facts["kind"], facts.get("sizes")) if config is not None else 0)

    return count, method


def media_tokens(config: Any, kind: str | None, sizes: list[tuple[int, int]] | None) -> int:
    """Media placeholder tokens plus their newlines for a record of `kind` with image `sizes` (video: the model's
    frame count), from the model config alone."""
    if kind == "video":
        frames = config.num_video_frames
        return num_video_tokens(config, frames) + frames // config.video_pool_size
    if kind in ("image", "images") and sizes:
        single = len(sizes) == 1
        return sum(num_image_tokens(config, w, h, single) + 1 for w, h in sizes)
    return 0


def chatml_bytes(conversations: list[dict[str, Any]], system: str) -> int:
    """UTF-8 bytes of the sample's ChatML text, unstripped and markers kept: an upper bound on its text tokens for
    any byte-level BPE (every token, special ones included, covers at least one byte)."""
    return len(_chatml(conversations, system, strip=False).encode("utf-8"))


def _chatml(conversations: list[dict[str, Any]], system: str = "You are a helpful assistant.",
            strip: bool = True) -> str:
    roles = {"human": "user", "gpt": "assistant"}
    text = f"<|im_start|>system\n{system}<|im_end|>\n"
    for turn in conversations:
        value = str(turn.get("value", ""))
        if strip:
            value = value.replace("<image>", "").replace("<video>", "").strip()
        text += f"<|im_start|>{roles.get(turn.get('from'), 'user')}\n{value}<|im_end|>\n"
    return text
