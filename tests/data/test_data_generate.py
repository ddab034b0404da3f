"""Generator: determinism, answers recomputed from the scene, pixels match the scene, defect rates, knobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from decord import VideoReader, cpu
from PIL import Image

from nvila_model.data.config import GenerateConfig, subset_configs
from nvila_model.data.generate import SUBSETS, build_split, run_generate
from nvila_model.data.manifest import read_manifest, record_kind
from nvila_model.data.render import COLOURS, write_mp4


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_same_bytes(corpus: Path, scale: float, tmp_path: Path) -> None:
    again = run_generate(GenerateConfig(scale=scale, seed=3), tmp_path / "a")
    first, second = _files(corpus), _files(again)
    assert first.keys() == second.keys()
    assert any(k.endswith(".mp4") for k in first) and any(k.endswith(".png") for k in first)
    assert [k for k in first if first[k] != second[k]] == []


def test_a_small_clip_encodes_to_the_same_bytes_every_time(tmp_path: Path) -> None:
    """libx264's MB-tree gave a different bitstream for this 56x42 clip in about one encode of sixteen."""
    frames = np.random.default_rng(0).integers(0, 255, size=(16, 42, 56, 3), dtype=np.uint8)
    digests = set()
    for i in range(60):
        write_mp4(frames, tmp_path / f"{i}.mp4")
        digests.add((tmp_path / f"{i}.mp4").read_bytes())
    assert len(digests) == 1


def test_other_seed_gives_other_data(corpus: Path, scale: float, tmp_path: Path) -> None:
    cfg = GenerateConfig(scale=scale, seed=4, subsets={name: {"enabled": name == "attributes"} for name in SUBSETS})
    other = run_generate(cfg, tmp_path / "synth")
    assert (other / "train.jsonl").read_bytes() != (corpus / "train.jsonl").read_bytes()


def test_every_clean_answer_is_recomputed_from_the_scene(corpus: Path) -> None:
    seen = set()
    for split in ("train", "val", "test"):
        for r in read_manifest(corpus / f"{split}.jsonl"):
            subset = SUBSETS[r["subset"]]
            answers = [t["value"] for t in r["conversations"][1::2]]
            expected = [subset.answer(r["scene"], q) for q in r["qtypes"]]
            if r.get("defect") == "noise":
                assert answers[:-1] == expected[:-1] and answers[-1] != expected[-1]
                assert answers[-1] in subset.questions[r["qtypes"][-1]]
            else:
                assert answers == expected, r["id"]
            assert all(a in subset.questions[q] for a, q in zip(expected, r["qtypes"], strict=True))
            seen.add(r["subset"])
    assert seen == set(SUBSETS)


def test_pixels_match_the_scene(corpus: Path) -> None:
    for r in read_manifest(corpus / "val.jsonl"):
        if r["subset"] in ("attributes", "counting", "spatial"):
            img = Image.open(corpus / r["image"]).convert("RGB")
            assert img.size == (r["scene"]["w"], r["scene"]["h"])
            for s in r["scene"]["shapes"]:
                assert img.getpixel((int(s["x"]), int(s["y"]))) == COLOURS[s["colour"]]


def test_video_frames_show_the_motion(corpus: Path) -> None:
    for r in read_manifest(corpus / "test.jsonl"):
        if r["subset"] != "motion":
            continue
        frames = VideoReader(str(corpus / r["video"]), ctx=cpu(0)).get_batch([0, 15]).asnumpy().astype(float)
        bg = np.asarray(r["scene"]["bg"], dtype=float)
        centres = [np.argwhere(np.abs(f - bg).sum(-1) > 60).mean(0) for f in frames]  # (y, x) of the shape
        dy, dx = centres[1] - centres[0]
        direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert direction == r["conversations"][1]["value"]


def test_noise_and_duplicate_shares_match_the_knobs_and_test_is_clean() -> None:
    subset, sc = SUBSETS["counting"], subset_configs(GenerateConfig())["counting"]
    sc.noise, sc.duplicate = 0.2, 0.1
    train = build_split(subset, sc, "train", 50, np.random.default_rng(0))
    assert sum(r.get("defect") == "noise" for r in train) == 10
    dups = [r for r in train if r.get("defect") == "duplicate"]
    assert len(dups) == 5
    by_id = {r["id"]: r for r in train}
    for d in dups:
        src = by_id[d["duplicate_of"]]
        assert d["scene"]["jitter"] != [0, 0] and {**d["scene"], "jitter": None} == {**src["scene"], "jitter": None}
    test = build_split(subset, sc, "test", 50, np.random.default_rng(0))
    assert not any("defect" in r for r in test)


def test_subsets_json_states_chance_and_kinds(corpus: Path) -> None:
    table = {row["name"]: row for row in json.loads((corpus / "subsets.json").read_text())}
    assert table["counting"]["chance"] == 0.25 and table["spatial"]["chance"] == 0.5
    assert table["attributes"]["chance"] == pytest.approx((1 / 6 + 1 / 3) / 2, abs=1e-4)
    kinds = {record_kind(r) for r in read_manifest(corpus / "train.jsonl")}
    assert kinds == {"image", "images", "video"}
    assert {row["media"] for row in table.values()} == {"image", "images", "video"}


def test_multi_turn_records_exist_and_sizes_scale(corpus: Path, scale: float) -> None:
    train = read_manifest(corpus / "train.jsonl")
    assert any(len(r["conversations"]) == 4 for r in train)
    assert sum(r["subset"] == "attributes" for r in train) == round(300 * scale)


def test_bad_knobs_are_value_errors(scale: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown subset"):
        GenerateConfig(subsets={"nope": {}})
    with pytest.raises(ValueError, match="subsets.text.sizee: unknown key"):
        GenerateConfig(subsets={"text": {"sizee": 3}})
    with pytest.raises(ValueError, match="noise and duplicate"):
        GenerateConfig(subsets={"text": {"noise": 0.7, "duplicate": 0.5}})
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "precious.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        run_generate(GenerateConfig(scale=scale), tmp_path / "synth")


def test_the_text_vocabulary_is_a_knob_its_answers_noise_and_chance_follow() -> None:
    from nvila_model.data.generate import subsets_table

    words = ["nue", "une", "enu"]
    sc = subset_configs(GenerateConfig(subsets={"text": {"words": words, "noise": 0.5}}))["text"]
    records = build_split(SUBSETS["text"], sc, "train", 60, np.random.default_rng(0))
    assert {r["scene"]["word"] for r in records} == set(words)
    assert {r["conversations"][-1]["value"] for r in records} == set(words)  # label noise draws from them too
    assert sum(r.get("defect") == "noise" for r in records) == 30
    row = next(r for r in subsets_table({"text": sc}, 1.0) if r["name"] == "text")
    assert row["answers"] == sorted(words) and row["chance"] == round(1 / 3, 4)
    for bad in (["cat"], ["cat", "cat"], ["Cat", "dog"], ["the", "dog"], ["ca t", "dog"]):
        with pytest.raises(ValueError, match="words must be"):
            GenerateConfig(subsets={"text": {"words": bad}})
