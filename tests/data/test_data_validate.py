"""Validation: every defect kind is quarantined with its reason, counts add up, the reject-share gate names a subset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from nvila_model.data.checks import make_token_counter
from nvila_model.data.config import ValidateConfig
from nvila_model.data.loader import LlavaDataset
from nvila_model.data.manifest import media_paths, read_manifest, record_kind
from nvila_model.data.validate import run_validate


def test_each_defect_gets_its_reason(bad_raw, tmp_path: Path) -> None:
    raw, records, expected = bad_raw
    cfg = ValidateConfig(name="bad", splits=["train"], max_image_pixels=30_000, max_tokens=600, max_reject_share=1.0)
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

    count, method = make_token_counter(processor)
    assert method == "tokenizer"
    for r in read_manifest(corpus / "val.jsonl")[:12]:
        facts = record_facts(r, corpus, 10**7, 8, count)
        images = [Image.open(p).convert("RGB") for p in media_paths(r, corpus)] if record_kind(r) != "video" else []
        video = LlavaDataset([r], corpus, processor).load_raw(0)["video"]
        assert facts["tokens"] == processor.encode(r["conversations"], images=images or None,
                                                   video=video)["input_ids"].shape[0], r["id"]


def test_the_validated_corpus_is_the_same_bytes_when_validated_again(corpus: Path, tmp_path: Path) -> None:
    """What the stages downstream read must not change when nothing they read changed: the data docs (time-stamped
    by great-expectations) go to a folder of their own, and a model whose token counts keep every record (a
    frontier variant) validates to the same corpus, so DVC restores the scores and models instead of recomputing."""
    from nvila_model.manifest import hash_path
    from nvila_model.train.config import ModelParams

    raw = tmp_path / "raw"
    shutil.copytree(corpus, raw / "synth")
    outs, docs = [], []
    for name, overrides in (("a", {}), ("b", {}), ("c", {"projector": "none", "dynamic_s2": False})):
        outs.append(run_validate(ValidateConfig(), raw / "synth", tmp_path / name, docs=tmp_path / f"docs-{name}",
                                 model_params=ModelParams(preset="tiny", overrides=overrides)))
        docs.append(tmp_path / f"docs-{name}")
    assert all((d / "index.html").is_file() for d in docs)
    assert not any((out / "data_docs").exists() for out in outs)
    assert hash_path(outs[0]) == hash_path(outs[1]) == hash_path(outs[2])
