"""Loader: round trip of every record kind through the processor, and bad records never stop the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from nvila_model.data.collate import PaddingCollator
from nvila_model.data.loader import LlavaDataset, load_video
from nvila_model.data.manifest import media_paths, read_manifest, record_kind
from nvila_model.data.render import write_mp4

TEXT_ONLY = {"id": "text-only-0", "subset": "chat",
             "conversations": [{"from": "human", "value": "Say cat."}, {"from": "gpt", "value": "cat"}]}


def _one_of_each(corpus: Path) -> dict[str, dict]:
    out = {"text": TEXT_ONLY}
    for r in read_manifest(corpus / "val.jsonl"):
        out.setdefault(record_kind(r), r)
    return out


def test_round_trip_every_record_kind(corpus: Path, processor) -> None:
    records = _one_of_each(corpus)
    assert set(records) == {"image", "images", "video", "text"}
    ds = LlavaDataset(list(records.values()), corpus, processor)
    cfg = processor.config
    for (kind, record), sample in zip(records.items(), (ds[i] for i in range(len(ds))), strict=True):
        assert sample is not None and sample["id"] == record["id"]
        answer = record["conversations"][1]["value"]
        supervised = sample["labels"][sample["labels"] != -100]
        assert processor.tokenizer.decode(supervised).startswith(answer)
        layout = sample["media_layout"].tolist()
        num_media_tokens = int(((sample["input_ids"] == cfg.image_token_id)
                                | (sample["input_ids"] == cfg.video_token_id)).sum())
        if kind == "image":
            w, h = record["scene"]["w"], record["scene"]["h"]
            assert layout[0][0] == 0 and num_media_tokens == processor.num_image_tokens(w, h)
        elif kind == "images":
            assert [row[0] for row in layout] == [1, 1] and sample["pixel_values"].shape[0] == 2
        elif kind == "video":
            assert layout == [[2, 1, 1, cfg.num_video_frames]]
            assert num_media_tokens == processor.num_video_tokens(cfg.num_video_frames)
        else:
            assert layout == [] and sample["pixel_values"].shape[0] == 0
    assert ds.failures == []


def test_processed_samples_are_cached_within_the_budget(corpus: Path, processor, tmp_path: Path) -> None:
    """A cached record is processed once (its media may even be gone the second time) and comes back identical;
    a record that would overflow `cache_mb` is not kept; without a cache every access decodes again."""
    shutil.copytree(corpus, tmp_path / "c")
    records = [r for r in _one_of_each(tmp_path / "c").values() if record_kind(r) in ("image", "video")]
    fresh = [LlavaDataset(records, tmp_path / "c", processor)[i] for i in range(2)]
    first_size = sum(v.nbytes for v in fresh[0].values() if isinstance(v, torch.Tensor))
    cached = LlavaDataset(records, tmp_path / "c", processor, cache_mb=(first_size + 1) / 2**20)
    uncached = LlavaDataset(records, tmp_path / "c", processor)
    for ds in (cached, uncached):
        assert [ds[i] is not None for i in range(2)] == [True, True]
    for record in records:
        for path in media_paths(record, tmp_path / "c"):
            path.unlink()
    again = cached[0]
    assert again is not None and all(torch.equal(again[k], fresh[0][k]) for k in ("input_ids", "pixel_values"))
    assert cached[1] is None and uncached[0] is None, "not cached: decoded again, and the file is gone"
    assert list(cached.cache) == [0]


def test_video_frames_are_the_uniformly_sampled_ones(corpus: Path) -> None:
    record = _one_of_each(corpus)["video"]
    ds = LlavaDataset([record], corpus, processor=None, num_video_frames=8)
    frames = ds[0]["video"]
    with av.open(str(corpus / record["video"])) as container:
        every = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == (8, *every.shape[1:]) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, every[[1, 3, 5, 7, 9, 11, 13, 15]])


def test_decord_bad_widths_fall_back_to_pyav(tmp_path: Path) -> None:
    frames = np.zeros((4, 32, 48, 3), np.uint8)
    frames[:, :, :24] = 200
    write_mp4(frames, tmp_path / "v.mp4")
    out = load_video(tmp_path / "v.mp4", lambda n: [0, n - 1])
    assert out.shape == (2, 32, 48, 3) and abs(int(out[0, 10, 5, 0]) - 200) < 8


def test_bad_records_mid_manifest_never_stop_the_rest(corpus: Path, processor, tmp_path: Path, caplog) -> None:
    kinds = _one_of_each(corpus)
    good = [kinds["image"], kinds["video"], kinds["images"], TEXT_ONLY]
    for r in good:
        for path in media_paths(r, corpus):
            (tmp_path / path.relative_to(corpus)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / path.relative_to(corpus))
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    bad = [{**kinds["image"], "id": "corrupt-png", "image": "images/broken.png"},
           {**kinds["video"], "id": "missing-video", "video": "videos/nowhere.mp4"},
           {**kinds["video"], "id": "corrupt-mp4", "video": "videos/broken.mp4"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [good[0], bad[0], good[1], bad[1], bad[2], *good[2:]]))
    ds = LlavaDataset(manifest, processor=processor)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=PaddingCollator(processor.pad_id))
    ids = [i for batch in loader for i in batch["ids"]]
    assert ids == [r["id"] for r in good]
    assert sorted(rid for rid, _ in ds.failures) == ["corrupt-mp4", "corrupt-png", "missing-video"]
    assert "skipping record corrupt-png" in caplog.text
    substituting = LlavaDataset(manifest, processor=processor, substitute_failed=True)
    assert [substituting[i]["id"] for i in range(len(substituting))] == [
        good[0]["id"], good[1]["id"], good[1]["id"], good[2]["id"], good[2]["id"], good[2]["id"], good[3]["id"]]


def test_all_failed_batch_and_bad_manifest_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="all 2 samples"):
        PaddingCollator(0)([None, None])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(TEXT_ONLY) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"m.jsonl:2: not valid JSON"):
        LlavaDataset(manifest)
    as_json = tmp_path / "m.json"
    as_json.write_text(json.dumps([TEXT_ONLY, TEXT_ONLY]))
    assert len(LlavaDataset(as_json)) == 2 and LlavaDataset(as_json)[1]["images"] == []
    as_json.write_text(json.dumps({"id": 1}))
    with pytest.raises(ValueError, match=r"m.json: a .json manifest must hold a list"):
        LlavaDataset(as_json)
