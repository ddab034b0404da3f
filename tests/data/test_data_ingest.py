"""Someone else's data: one manifest mixing many good records with unreadable lines, media paths leaving the media
root, over-long samples and every older defect kind; exact kept / quarantined counts and reasons, nothing left in the
system temp folder, and the loader and registry refusing the same paths."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from nvila_model.data.checks import make_token_counter, record_facts
from nvila_model.data.config import ValidateConfig
from nvila_model.data.loader import LlavaDataset, load_media
from nvila_model.data.manifest import MediaPathError, media_root_for, read_manifest, record_kind, scan_manifest
from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.data.validate import run_validate
from nvila_model.presets import build_config
from nvila_model.train.config import ModelParams

MODES = {"cmyk.jpg": "CMYK", "rgba.png": "RGBA", "grey.png": "L", "palette.png": "P"}


def _media_records(img: dict, root: Path, outside: Path) -> tuple[list[dict], dict[str, str]]:
    """Images in other modes (kept), paths escaping the root three ways, and in-root absolute / symlinked paths."""
    (outside / "x.png").parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "blue").save(outside / "x.png")
    for name, mode in MODES.items():
        Image.new("RGB", (64, 48), "green").convert(mode).save(root / "images" / name)
    (root / "images" / "link.png").symlink_to(outside / "x.png")
    (root / "images" / "alias.png").symlink_to(root / "images" / "rgba.png")
    kept = [{**img, "id": f"mode-{name}", "image": f"images/{name}"} for name in MODES]
    kept += [{**img, "id": "inside-absolute", "image": str(root / "images" / "grey.png")},
             {**img, "id": "inside-symlink", "image": "images/alias.png"}]
    escaping = [{**img, "id": "dotdot", "image": "images/../../elsewhere/x.png"},
                {**img, "id": "absolute", "image": str(outside / "x.png")},
                {**img, "id": "symlink", "image": "images/link.png"}]
    return kept + escaping, {r["id"]: "path_escapes_media_root" for r in escaping}


@pytest.fixture(scope="module")
def issue_corpus(corpus: Path, make_bad_corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """LLaVA layout: `raw/llava/train.jsonl` apart from the media folder `media/`. Returns (raw, media root, facts)."""
    tmp = tmp_path_factory.mktemp("issue")
    root, raw = tmp / "media", tmp / "raw"
    (raw / "llava").mkdir(parents=True)
    defects, expected = make_bad_corpus(corpus, root)  # copies the corpus' images/ and videos/ to the media root
    long = next(r for r in defects if r["id"] == "long")
    long["conversations"][0]["value"] += " why" * 2000  # over max_text_chars (8000)
    good = read_manifest(corpus / "train.jsonl")
    img = defects[0]
    media, escaping = _media_records(img, root, tmp / "elsewhere")
    q, a = img["conversations"]
    wordy = {**img, "id": "wordy", "conversations": [{**q, "value": q["value"] + " and" * 400}, a]}  # 1.6k chars
    lines = [json.dumps(r).encode() for r in [*good[:60], *defects, *media, wordy]]
    bad_lines = {
        "invalid_utf8": json.dumps({**img, "id": "latin1"}).encode().replace(b"<image>", b"<image> caf\xe9"),
        "invalid_json": json.dumps(img).encode()[:-9],
        "not_an_object": b'["a", "list"]',
    }
    lines.insert(3, bad_lines["invalid_utf8"])
    lines.insert(40, bad_lines["invalid_json"])
    lines.insert(70, bad_lines["not_an_object"])
    lines += [json.dumps(r).encode() for r in good[60:]]
    lines.insert(10, b"")
    lines.insert(50, b"   ")
    lines[20] += b"\r"  # a CRLF line is read like any other
    (raw / "llava" / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    line_of = {reason: lines.index(text) + 1 for reason, text in bad_lines.items()}
    expected = {**expected, **escaping, "wordy": "too_long"}
    kept = [r["id"] for r in [*good, *defects, *media] if r["id"] not in expected] + [defects[0]["id"]]
    return raw, root, {"expected": expected, "unreadable": line_of, "num_lines": len(lines), "kept": kept}


def _validate(raw: Path, out: Path, root: Path | None, **overrides) -> Path:
    cfg = ValidateConfig(name="llava", splits=["train"], max_image_pixels=30_000, max_reject_share=1.0,
                         data_docs=False, **overrides)
    return run_validate(cfg, raw, out, model_params=ModelParams(preset="tiny"), media_root=root)


def test_every_line_is_kept_or_quarantined_with_its_reason(issue_corpus, tmp_path: Path) -> None:
    raw, root, facts = issue_corpus
    out = _validate(raw / "llava", tmp_path / "out", root)
    quarantine = read_manifest(out / "quarantine.jsonl")
    by_id = {q["id"]: q["quarantine_reason"] for q in quarantine if "id" in q}
    assert by_id == facts["expected"]
    unreadable = {q["quarantine_reason"]: q for q in quarantine if "id" not in q}
    assert {reason: q["line"] for reason, q in unreadable.items()} == facts["unreadable"]
    assert "caf\\xe9" in unreadable["invalid_utf8"]["raw"] and "0xe9" in unreadable["invalid_utf8"]["detail"]
    assert unreadable["not_an_object"]["raw"] == '["a", "list"]'
    kept = read_manifest(out / "train.jsonl")
    assert sorted(r["id"] for r in kept) == sorted(facts["kept"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["blank_lines"] == 2 and summary["unreadable"] == 3
    assert summary["input"] == len(kept) + len(quarantine) == facts["num_lines"] - 2
    assert summary["by_reason"]["path_escapes_media_root"] == 3 and summary["by_reason"]["too_long"] == 2
    assert summary["length_check"]["text"] == "utf8_bytes_bound"
    assert (out / json.loads((out / "manifest.json").read_text())["media_root"]).resolve() == root.resolve()
    dataset = LlavaDataset(out / "train.jsonl")  # the validated manifest finds its media root again
    assert all(dataset.load_raw(i) for i in range(len(dataset)))


def test_lines_are_accounted_for_in_every_manifest(issue_corpus) -> None:
    raw, _, facts = issue_corpus
    manifest = raw / "llava" / "train.jsonl"
    entries, blank = scan_manifest(manifest)
    assert len(entries) + blank == facts["num_lines"] == len(manifest.read_bytes().split(b"\n")) - 1
    assert {e.problem for e in entries} == {"", "invalid_utf8", "invalid_json", "not_an_object"}
    with pytest.raises(ValueError, match=rf"train.jsonl:{facts['unreadable']['invalid_utf8']}: not valid UTF-8"):
        read_manifest(manifest)  # strict readers (training inputs) name file and line


def test_scan_reads_every_kind_of_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [b'\xef\xbb\xbf{"id": "bom"}', b'{"id": "sep\xe2\x80\xa8inside"}', b'{"id": "lone \\udcff"}',
             b"   ", b'{"id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"7", b'{"id": "last"}']
    path.write_bytes(b"\n".join(lines))  # no newline after the last line
    entries, blank = scan_manifest(path)
    assert blank == 1 and len(entries) == 6 and [e.line for e in entries] == [1, 2, 3, 5, 6, 7]
    assert [e.problem for e in entries] == ["", "", "invalid_utf8", "invalid_json", "not_an_object", ""]
    assert entries[0].record == {"id": "bom"} and entries[1].record == {"id": "sep\u2028inside"}
    assert entries[2].raw == '{"id": "lone \\udcff"}'


def test_length_limit_holds_without_a_tokenizer(corpus: Path, processor) -> None:
    """The default count (UTF-8 byte bound + exact media tokens) never under-counts the processor's real count."""
    bound, method = make_token_counter(None, processor.config)
    exact, _ = make_token_counter(processor)
    assert method == "utf8_bytes_bound"
    for r in read_manifest(corpus / "val.jsonl"):
        tokens = [record_facts(r, corpus, 10**7, 8, count)["tokens"] for count in (bound, exact)]
        assert tokens[1] <= tokens[0] <= 4 * tokens[1], (r["id"], tokens)
    media_only = make_token_counter(lambda text: 0, build_config("tiny"))[0]
    video = next(r for r in read_manifest(corpus / "val.jsonl") if record_kind(r) == "video")
    assert record_facts(video, corpus, 10**7, 8, media_only)["tokens"] == 4 * (16 + 1)  # 8 frames / 2, 16 + "\n"


def test_a_json_list_manifest(corpus: Path, tmp_path: Path) -> None:
    """LLaVA's .json list: undecodable bytes cost only their record; a file that does not parse is one clear error."""
    records = read_manifest(corpus / "train.jsonl")[:5]
    raw = tmp_path / "raw" / "llava"
    raw.mkdir(parents=True)
    text = json.dumps([records[0], {**records[1], "id": "bad-bytes"}, *records[2:]]).encode()
    (raw / "train.json").write_bytes(text.replace(b'"bad-bytes"', b'"bad-\xff-bytes"'))
    out = _validate(raw, tmp_path / "out", corpus)
    [q] = read_manifest(out / "quarantine.jsonl")
    assert q["quarantine_reason"] == "invalid_utf8" and q["index"] == 1 and "bad-\\udcff-bytes" in q["raw"]
    assert len(read_manifest(out / "train.jsonl")) == 4
    (raw / "train.json").write_bytes(text[:-20])
    with pytest.raises(ValueError, match=r"train.json: not valid JSON .*none of it was read"):
        _validate(raw, tmp_path / "out2", corpus)


def test_loader_and_registry_refuse_paths_outside_the_root(issue_corpus, tmp_path: Path) -> None:
    raw, root, _ = issue_corpus
    entries, _ = scan_manifest(raw / "llava" / "train.jsonl")
    escaping = [e.record for e in entries if e.record and e.record["id"] in ("dotdot", "absolute", "symlink")]
    assert len(escaping) == 3
    for record in escaping:
        with pytest.raises(MediaPathError, match="outside the media root"):
            load_media(record, root, lambda n: list(range(n)))
    dataset = LlavaDataset(escaping, root)
    assert [dataset[i] for i in range(3)] == [None] * 3
    assert all("outside the media root" in why for _, why in dataset.failures)
    manifest = tmp_path / "reg" / "train.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps(escaping[0]) + "\n")
    registry = DatasetRegistry(DatasetsConfig(entries={"user": {"manifest": str(manifest), "media_root": str(root)}}))
    with pytest.raises(ValueError, match=r"train.jsonl: record 'dotdot': .* outside the media root"):
        registry.records("user", "train")


def test_a_media_root_that_is_no_folder_is_named(issue_corpus, tmp_path: Path) -> None:
    raw, _, _ = issue_corpus
    with pytest.raises(ValueError, match=r"nowhere: media_root is not a folder"):
        _validate(raw / "llava", tmp_path / "out", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"nowhere: score.media_root is not a folder"):
        media_root_for(raw / "llava" / "train.jsonl", tmp_path / "nowhere", "score.media_root")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_data_docs_stay_in_the_stage_output(bad_raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _, _ = bad_raw
    temp = tmp_path / "system-temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    cfg = ValidateConfig(name="bad", splits=["train"], max_reject_share=1.0)
    out = run_validate(cfg, raw / "bad", tmp_path / "out")
    assert (out / "data_docs" / "index.html").is_file()
    assert list(temp.iterdir()) == []
