"""Validation: every defect kind is quarantined with its reason, counts add up, the reject-share gate names a subset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nvila_model.data.checks import make_token_counter
from nvila_model.data.config import ValidateConfig
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import media_paths, read_manifest, record_kind, write_jsonl
from nvila_model.data.render import write_mp4
from nvila_model.data.validate import run_validate


def _bad_corpus(corpus: Path, root: Path) -> tuple[list[dict], dict[str, str]]:
    """Good records of every kind plus one record per defect; returns records and id -> expected reason."""
    records = read_manifest(corpus / "val.jsonl")
    good = [next(r for r in records if record_kind(r) == k and len(r["conversations"]) == 2)
            for k in ("image", "images", "video")]
    shutil.copytree(corpus / "images", root / "images")
    shutil.copytree(corpus / "videos", root / "videos")
    img, vid = good[0], good[2]
    Image.new("RGB", (200, 200), "red").save(root / "images" / "big.png")
    Image.new("RGB", (4, 4), "red").save(root / "images" / "tiny.png")
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    write_mp4(np.zeros((4, 32, 32, 3), np.uint8), root / "videos" / "short.mp4")
    q, a = img["conversations"][:2]
    defects = {
        "schema": ({"id": "schema", "subset": "attributes"}, "bad_conversations"),
        "dup": ({**img}, "duplicate_id"),
        "missing": ({**img, "id": "missing", "image": "images/nowhere.png"}, "missing_media"),
        "corrupt": ({**img, "id": "corrupt", "image": "images/corrupt.png"}, "decode_error"),
        "big": ({**img, "id": "big", "image": "images/big.png"}, "image_too_large"),
        "tiny": ({**img, "id": "tiny", "image": "images/tiny.png"}, "image_too_small"),
        "short": ({**vid, "id": "short", "video": "videos/short.mp4"}, "too_few_frames"),
        "turns": ({**img, "id": "turns", "conversations": [q, q]}, "turns_not_alternating"),
        "empty": ({**img, "id": "empty", "conversations": [q, {**a, "value": "  "}]}, "empty_answer"),
        "marker": ({**img, "id": "marker", "conversations": [{**q, "value": "no marker"}, a]}, "marker_mismatch"),
        "long": ({**img, "id": "long", "conversations": [{**q, "value": q["value"] + " why" * 100}, a]}, "too_long"),
    }
    expected = {rec["id"]: reason for rec, reason in defects.values()}  # "dup" repeats the first record's id
    recs = [good[0], *(rec for rec, _ in list(defects.values())[:6]), good[1], *(rec for rec, _ in
                                                                               list(defects.values())[6:]), good[2]]
    return recs, expected


@pytest.fixture()
def bad_raw(corpus: Path, tmp_path: Path) -> tuple[Path, list[dict], dict[str, str]]:
    raw = tmp_path / "raw"
    (raw / "bad").mkdir(parents=True)
    records, expected = _bad_corpus(corpus, raw / "bad")
    write_jsonl(records, raw / "bad" / "train.jsonl")
    return raw, records, expected


def test_each_defect_gets_its_reason(bad_raw, tmp_path: Path) -> None:
    raw, records, expected = bad_raw
    cfg = ValidateConfig(name="bad", splits=["train"], max_image_pixels=30_000, max_tokens=300, max_reject_share=1.0)
    out = run_validate(cfg, raw / "bad", tmp_path / "out", tokenizer=len)  # a `text -> count` callable as tokenizer
    quarantine = read_manifest(out / "quarantine.jsonl")
    assert len(quarantine) == len(expected)
    assert {r["id"]: r["quarantine_reason"] for r in quarantine} == expected
    kept = read_manifest(out / "train.jsonl")
    assert [r["id"] for r in kept] == [records[0]["id"], records[7]["id"], records[-1]["id"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] + summary["quarantined"] == summary["input"] == len(records)
    assert summary["by_reason"]["image_too_large"] == 1 and summary["by_reason"]["duplicate_id"] == 1
    assert (out / "data_docs" / "index.html").is_file()
    assert LlavaDataset(out / "train.jsonl")[0]["images"]  # media resolve from the validated folder


def test_reject_share_gate_names_the_worst_subset(bad_raw, tmp_path: Path) -> None:
    raw, _, _ = bad_raw
    cfg = ValidateConfig(name="bad", splits=["train"], max_reject_share=0.05, data_docs=False)
    with pytest.raises(ValueError, match=r"subset 'attributes' rejected \d+/\d+ records"):
        run_validate(cfg, raw / "bad", tmp_path / "out")
    assert (tmp_path / "out" / "quarantine.jsonl").is_file()  # written before failing, for the user to read


def test_clean_corpus_passes_whole(corpus: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(corpus, raw / "synth")
    out = run_validate(ValidateConfig(data_docs=False), raw / "synth", tmp_path / "v")
    for split in ("train", "val", "test"):
        assert (out / f"{split}.jsonl").read_bytes() == (corpus / f"{split}.jsonl").read_bytes()
    assert read_manifest(out / "quarantine.jsonl") == []


def test_token_counter_from_the_processor_is_exact(corpus: Path, processor) -> None:
    from nvila_model.data.checks import record_facts

    count = make_token_counter(processor)
    for r in read_manifest(corpus / "val.jsonl")[:12]:
        facts = record_facts(r, corpus, 10**7, 8, count)
        images = [Image.open(p).convert("RGB") for p in media_paths(r, corpus)] if record_kind(r) != "video" else []
        video = LlavaDataset([r], corpus, processor).load_raw(0)["video"]
        assert facts["tokens"] == processor.encode(r["conversations"], images=images or None,
                                                   video=video)["input_ids"].shape[0], r["id"]
