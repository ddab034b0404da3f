"""LLaVA-format manifests: read JSON / JSONL records, check their schema, resolve media paths against a root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MEDIA_KEYS = ("image", "images", "video")
MARKERS = {"image": "<image>", "video": "<video>"}
ROLES = ("human", "gpt")


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Records of a `.jsonl` (one object a line) or `.json` (a list of objects) file; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(records, list):
            raise ValueError(f"{path}: a .json manifest must hold a list of records")
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc}") from exc
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is a {type(record).__name__}, not an object")
    return records


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSON lines (sorted keys are not used: field order is kept as written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for record in records:
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
    return path


def default_media_root(manifest_path: str | Path) -> Path:
    """The media root of a manifest: `media_root` from a stage `manifest.json` beside it, else its folder."""
    folder = Path(manifest_path).parent
    stage = folder / "manifest.json"
    if stage.is_file():
        root = json.loads(stage.read_text()).get("media_root")
        if root:
            return (folder / root).resolve() if not Path(root).is_absolute() else Path(root)
    return folder


def record_kind(record: dict[str, Any]) -> str:
    """'image', 'images', 'video' or 'text' (no media)."""
    for key in MEDIA_KEYS:
        if record.get(key):
            return key
    return "text"


def media_paths(record: dict[str, Any], media_root: str | Path | None) -> list[Path]:
    """Absolute-or-root-relative paths of the record's media files, in marker order."""
    root = Path(media_root) if media_root is not None else Path(".")
    kind = record_kind(record)
    if kind == "text":
        return []
    value = record[kind]
    rels = value if isinstance(value, list) else [value]
    return [root / rel for rel in rels]


def schema_problem(record: dict[str, Any]) -> str | None:
    """The first schema problem of a record as a quarantine reason, or None when it is well formed."""
    if not isinstance(record.get("id"), str | int) or record.get("id") == "":
        return "missing_id"
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv or not all(isinstance(t, dict) for t in conv):
        return "bad_conversations"
    if any(t.get("from") not in ROLES or not isinstance(t.get("value"), str) for t in conv):
        return "bad_conversations"
    if sum(1 for k in MEDIA_KEYS if record.get(k)) > 1:
        return "bad_media_keys"
    images = record.get("images")
    if images is not None and (not isinstance(images, list) or not all(isinstance(p, str) for p in images)):
        return "bad_media_keys"
    if any(record.get(k) is not None and not isinstance(record[k], str) for k in ("image", "video")):
        return "bad_media_keys"
    return None


def turns_alternate(conversations: list[dict[str, Any]]) -> bool:
    """Human first, then strictly human / gpt alternating, ending on gpt."""
    roles = [t.get("from") for t in conversations]
    return len(roles) >= 2 and len(roles) % 2 == 0 and all(r == ROLES[i % 2] for i, r in enumerate(roles))


def answers_nonempty(conversations: list[dict[str, Any]]) -> bool:
    return all(str(t.get("value", "")).strip() for t in conversations if t.get("from") == "gpt")


def markers_match(record: dict[str, Any]) -> bool:
    """One `<image>` per image (and none otherwise), one `<video>` for a video."""
    text = "".join(str(t.get("value", "")) for t in record.get("conversations", []))
    kind = record_kind(record)
    num_images = {"image": 1, "images": len(record.get("images") or [])}.get(kind, 0)
    return text.count(MARKERS["image"]) == num_images and text.count(MARKERS["video"]) == (kind == "video")


def conversation_text(conversations: list[dict[str, Any]]) -> str:
    """All turns' text joined, markers removed (what a tokenizer sees besides media tokens)."""
    text = "\n".join(str(t.get("value", "")) for t in conversations)
    for marker in MARKERS.values():
        text = text.replace(marker, "")
    return text
