"""Per-record facts for validation: schema, media existence, header sizes, real decoding, token counts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from decord import VideoReader, cpu
from PIL import Image

from ..video import frame_indices
from .loader import LOAD_ERRORS, load_video
from .manifest import (
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
                             "schema": schema_problem(record) or "", "kind": None, "media_exists": None,
                             "decode_ok": None, "decode_error": "", "width": None, "height": None, "min_side": None,
                             "pixels": None, "frames": None, "turns_alternate": None, "answers_nonempty": None,
                             "markers_match": None, "text_chars": None, "tokens": None}
    if facts["schema"]:
        return facts
    conv = record["conversations"]
    facts.update(kind=record_kind(record), turns_alternate=turns_alternate(conv),
                 answers_nonempty=answers_nonempty(conv), markers_match=markers_match(record),
                 text_chars=len(conversation_text(conv)))
    paths = media_paths(record, media_root)
    if paths:
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


def make_token_counter(obj: Any) -> TokenCounter | None:
    """A `(record, facts) -> tokens` function from an NVILA processor (exact: text + media tokens), a tokenizer
    (`encode` or `__call__` returning input ids; text only) or a plain `text -> count` callable."""
    if obj is None:
        return None
    if hasattr(obj, "num_image_tokens") and hasattr(obj, "tokenizer"):
        return _processor_counter(obj)
    if hasattr(obj, "encode") and not hasattr(obj, "num_image_tokens"):
        return lambda record, facts: len(obj.encode(_chatml(record["conversations"])))
    if callable(obj):
        return lambda record, facts: int(obj(_chatml(record["conversations"])))
    raise ValueError(f"cannot count tokens with a {type(obj).__name__}: need a processor, tokenizer or callable")


def _chatml(conversations: list[dict[str, Any]], system: str = "You are a helpful assistant.") -> str:
    roles = {"human": "user", "gpt": "assistant"}
    text = f"<|im_start|>system\n{system}<|im_end|>\n"
    for turn in conversations:
        value = str(turn.get("value", "")).replace("<image>", "").replace("<video>", "").strip()
        text += f"<|im_start|>{roles.get(turn.get('from'), 'user')}\n{value}<|im_end|>\n"
    return text


def _processor_counter(processor: Any) -> TokenCounter:
    tokenizer, config = processor.tokenizer, processor.config

    def count(record: dict[str, Any], facts: dict[str, Any]) -> int:
        text = _chatml(record["conversations"], getattr(config, "system_prompt", "You are a helpful assistant."))
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        kind = facts["kind"]
        if kind == "video":
            frames = config.num_video_frames
            n += processor.num_video_tokens(frames) + frames // config.video_pool_size
        elif kind in ("image", "images") and facts.get("sizes"):
            single = len(facts["sizes"]) == 1
            n += sum(processor.num_image_tokens(w, h, single) + 1 for w, h in facts["sizes"])
        return n

    return count
