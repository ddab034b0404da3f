"""Fixtures of the data tests: a small generated corpus (written under pytest's temporary directory)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nvila_model.data.config import GenerateConfig
from nvila_model.data.generate import run_generate
from nvila_model.data.manifest import read_manifest, record_kind, write_jsonl
from nvila_model.data.render import write_mp4

SCALE = 0.05  # 15 train / 2 val / 2 test records per image subset, 8 / 1 / 2 per video subset


@pytest.fixture(scope="session")
def scale() -> float:
    return SCALE


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_generate(GenerateConfig(scale=SCALE, seed=3), tmp_path_factory.mktemp("raw") / "synth")


def bad_corpus(corpus: Path, root: Path) -> tuple[list[dict], dict[str, str]]:
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


@pytest.fixture(scope="session")
def make_bad_corpus():
    """`bad_corpus`, for fixtures that build their own corpus around it."""
    return bad_corpus


@pytest.fixture()
def bad_raw(corpus: Path, tmp_path: Path) -> tuple[Path, list[dict], dict[str, str]]:
    raw = tmp_path / "raw"
    (raw / "bad").mkdir(parents=True)
    records, expected = bad_corpus(corpus, raw / "bad")
    write_jsonl(records, raw / "bad" / "train.jsonl")
    return raw, records, expected
