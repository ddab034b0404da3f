"""LLaVA-format manifests: read JSON / JSONL records line by line, check their schema, resolve media paths inside
a media root."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEDIA_KEYS = ("image", "images", "video")
MARKERS = {"image": "<image>", "video": "<video>"}
ROLES = ("human", "gpt")
UNREADABLE = ("invalid_utf8", "invalid_json", "not_an_object")  # reasons of a line that holds no record
ESCAPES_ROOT = "path_escapes_media_root"
_BOM = b"\xef\xbb\xbf"
SUBSETS_FILE = "subsets.json"  # a generated corpus's table of subsets (answer sets, chance), beside its manifests


@dataclass
class ManifestEntry:
    """One record slot: a non-blank `.jsonl` line (`line`, 1-based) or a `.json` list item (`index`, 0-based).

    An unreadable slot has `record=None`, a `problem` from `UNREADABLE`, a `detail` and its `raw` text (invalid bytes
    backslash-escaped) so that it can be quarantined instead of stopping the whole manifest.
    """

    where: str
    index: int
    line: int | None = None
    record: dict[str, Any] | None = None
    problem: str = ""
    detail: str = ""
    raw: str = ""


def _entry(where: str, index: int, line: int | None, value: Any, raw: str | None = None,
           maybe_surrogates: bool = True) -> ManifestEntry:
    """A parsed JSON value as an entry: an object is a record; anything else, or lone surrogates, is unreadable.

    `raw` is the line's text (a `.json` item has none: its JSON, surrogates escaped, stands in). Lone surrogates
    come from undecodable bytes of a `.json` file or from "\\udcff"-style escapes; no tokenizer can take them, and
    they are looked for only when `maybe_surrogates`."""
    if not isinstance(value, dict):
        return ManifestEntry(where, index, line, None, "not_an_object",
                             f"a JSON {type(value).__name__}, not an object", raw or json.dumps(value))
    if maybe_surrogates:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            return ManifestEntry(where, index, line, None, "invalid_utf8", f"not valid UTF-8: {exc.reason}",
                                 raw or json.dumps(value))
    return ManifestEntry(where, index, line, value)


def _parse_line(path: Path, lineno: int, index: int, data: bytes) -> ManifestEntry:
    where = f"{path}:{lineno}"
    raw = data.decode("utf-8", "backslashreplace")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ManifestEntry(where, index, lineno, None, "invalid_utf8", f"not valid UTF-8: {exc}", raw)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is an over-long integer
        return ManifestEntry(where, index, lineno, None, "invalid_json", f"not valid JSON: {exc}", raw)
    return _entry(where, index, lineno, value, raw, maybe_surrogates="\\ud" in text.lower())


def scan_jsonl(path: Path) -> tuple[list[ManifestEntry], int, int]:
    """Entries of a JSON-lines file, one per non-blank line, plus (physical lines, blank lines).

    Lines are split on b"\\n" only (JSON strings may hold U+2028 and friends); a UTF-8 byte-order mark is ignored.
    """
    entries, num_lines, blank = [], 0, 0
    with open(path, "rb") as fh:
        for num_lines, data in enumerate(fh, 1):
            if num_lines == 1 and data.startswith(_BOM):
                data = data[len(_BOM):]
            data = data.rstrip(b"\r\n")
            if not data.strip():
                blank += 1
                continue
            entries.append(_parse_line(path, num_lines, len(entries), data))
    return entries, num_lines, blank


def scan_json(path: Path) -> list[ManifestEntry]:
    """Entries of a `.json` list. It has no lines to quarantine: a file that does not parse is one `ValueError`.

    Undecodable bytes inside strings are kept as lone surrogates while parsing, so they cost only their record.
    """
    data = path.read_bytes().removeprefix(_BOM)
    try:
        text = data.decode("utf-8")
        maybe_surrogates = "\\ud" in text.lower()
    except UnicodeDecodeError:
        text, maybe_surrogates = data.decode("utf-8", "surrogateescape"), True
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); a .json manifest is parsed whole, so none of it was "
                         "read: fix it, or convert it to JSON lines (.jsonl), where a bad line costs only itself"
                         ) from exc
    if not isinstance(items, list):
        raise ValueError(f"{path}: a .json manifest must hold a list of records")
    return [_entry(f"{path}: record {i}", i, None, item, maybe_surrogates=maybe_surrogates)
            for i, item in enumerate(items)]


def scan_manifest(path: str | Path) -> tuple[list[ManifestEntry], int]:
    """Every record slot of a `.jsonl` or `.json` manifest (unreadable ones included) and its number of blank lines.

    Invariant: a `.jsonl` file's physical lines = len(entries) + blank lines.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found")
    if path.suffix == ".json":
        return scan_json(path), 0
    entries, num_lines, blank = scan_jsonl(path)
    assert num_lines == len(entries) + blank, (path, num_lines, len(entries), blank)
    return entries, blank


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Records of a `.jsonl` (one object a line) or `.json` (a list of objects) file, all of them readable: the first
    unreadable line is a `ValueError` naming file and line (validation quarantines such lines instead)."""
    entries, _ = scan_manifest(path)
    bad = [e for e in entries if e.problem]
    if bad:
        more = f" (and {len(bad) - 1} more unreadable)" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0].where}: {bad[0].detail}{more}")
    return [e.record for e in entries]


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


def media_root_for(manifest_path: str | Path, media_root: str | Path | None, setting: str = "media_root") -> Path:
    """`media_root` when given, else the manifest's default; a `ValueError` naming `setting` when it is no folder
    (every record would fail to load, quietly)."""
    root = Path(media_root) if media_root is not None else default_media_root(manifest_path)
    if not root.is_dir():
        raise ValueError(f"{root}: {setting} is not a folder" + ("" if media_root is not None else
                                                                  f" (the default for {manifest_path})"))
    return root


class MediaPathError(ValueError):
    """A media path that leaves its media root (`..`, an absolute path elsewhere, or a symlink pointing out)."""

    reason = ESCAPES_ROOT


def resolve_media(rel: str | Path, media_root: str | Path) -> Path:
    """The real path (symlinks followed) of media file `rel` under `media_root`; `MediaPathError` if it is not inside
    the real media root. The one check shared by validation, the registry and the loader: a manifest from someone
    else must not make the pipeline read arbitrary files on the machine."""
    root = Path(os.path.realpath(media_root))
    path = Path(os.path.realpath(root / rel))  # an absolute `rel` replaces the root, and is then checked like any
    if not path.is_relative_to(root):
        raise MediaPathError(f"media path {str(rel)!r} resolves to {path}, outside the media root {root}")
    return path


def record_kind(record: dict[str, Any]) -> str:
    """'image', 'images', 'video' or 'text' (no media)."""
    for key in MEDIA_KEYS:
        if record.get(key):
            return key
    return "text"


def media_values(record: dict[str, Any]) -> list[str]:
    """The record's media paths as written, in marker order."""
    kind = record_kind(record)
    if kind == "text":
        return []
    value = record[kind]
    return list(value) if isinstance(value, list) else [value]


def media_paths(record: dict[str, Any], media_root: str | Path | None) -> list[Path]:
    """Real paths of the record's media files inside `media_root` (`MediaPathError` for one outside it).

    `media_root=None` takes the paths as they are: records whose paths a `DatasetRegistry` already resolved."""
    if media_root is None:
        return [Path(v) for v in media_values(record)]
    return [resolve_media(v, media_root) for v in media_values(record)]


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
    if any("\x00" in v for v in media_values(record)):
        return "bad_media_keys"  # no file system takes a NUL byte in a path
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
