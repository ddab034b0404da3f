"""bench/single_task.py, behind bench/visual_centering.py, bench/video_frames.py and bench/relations.py: the
corpus holds only the asked subsets with the frontier's scene settings and no defects, exact match credits each
packed record with its own answer tokens, and the command line runs the arms and tasks it names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.single_task import (
    add_knob_option,
    arg_parser,
    choices,
    exact_match,
    knobs_of,
    params,
    result_name,
    subset_corpus,
    train,
)
from nvila_model.data.collate import PackingCollator
from nvila_model.data.loader import LlavaDataset, load_video
from nvila_model.data.manifest import read_manifest
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    return subset_corpus(tmp_path_factory.mktemp("single_task"), {"text": (6, 5), "flashes": (6, 5)}, seed=0)


def test_the_corpus_is_the_asked_subsets_clean_with_the_frontiers_scene_settings(corpus) -> None:
    data, _ = corpus
    train_records, test_records = read_manifest(data / "train.jsonl"), read_manifest(data / "test.jsonl")
    assert sorted({r["subset"] for r in train_records}) == ["flashes", "text"]
    assert len(train_records) == 12 and len(test_records) == 10
    assert not any(r.get("defect") for r in train_records)
    frontier = params()["frontier"]["settings"]["generate.subsets"]["flashes"]
    video = next(r for r in test_records if r["subset"] == "flashes")["video"]
    assert load_video(data / video, lambda total: list(range(total))).shape[0] == frontier["frames"]


def test_exact_match_credits_each_packed_record_with_its_own_answer(corpus, monkeypatch) -> None:
    data, tok_dir = corpus
    tokenizer = load_tokenizer(tok_dir)
    config = build_config("tiny", num_video_frames=8)
    model = NVILAForConditionalGeneration(config)
    model.set_attn_implementation("sdpa_varlen")
    dataset = LlavaDataset(read_manifest(data / "test.jsonl"), data, NVILAProcessor(tokenizer, config))
    batch_size, wrong_slot = 3, 0  # batches of 3, 3, 3, 1 over 5 text then 5 flashes records
    real = model.supervised_logits

    def answer_all_but_one(embeds, attention_mask, position_ids, labels, **kwargs):
        """Every answer token right, except those of the record at `wrong_slot` in each packed batch."""
        logits_TV, targets_T, supervised_1L = real(embeds, attention_mask, position_ids, labels, **kwargs)
        record_L = torch.cumsum(position_ids[0] == 0, 0) - 1  # positions restart at each packed record
        right_TV = torch.nn.functional.one_hot(targets_T, logits_TV.shape[-1]).float()
        right_TV[record_L[supervised_1L[0]] == wrong_slot] *= -1
        return right_TV, targets_T, supervised_1L

    monkeypatch.setattr(model, "supervised_logits", answer_all_but_one)
    got = exact_match(model, dataset, PackingCollator(), batch_size=batch_size)
    ids = [r["id"] for r in dataset.records]
    expected = {}
    for i, record_id in enumerate(ids):
        expected.setdefault(record_id.split("-")[0], []).append(i % batch_size != wrong_slot)
    assert got == {name: sum(h) / len(h) for name, h in expected.items()}
    assert got["text"] < 1.0 and got["flashes"] < 1.0


def test_train_measures_the_probe_before_and_after_and_scores_each_subset(corpus) -> None:
    data, tok_dir = corpus
    row = train({"num_video_frames": 8, "video_pool_size": 2}, data, tok_dir, steps=2, seed=0, stage="video_sft",
                probe=lambda model, batch: {"frames": float(model.config.num_video_frames)})
    assert row["frames_start"] == row["frames_end"] == 8.0
    assert set(row) >= {"test_text", "test_flashes", "test_mean", "train_loss_end", "train_seconds"}
    assert row["test_mean"] == (row["test_text"] + row["test_flashes"]) / 2


def test_the_command_line_runs_the_named_arms_and_tasks_in_order_and_refuses_others(capsys) -> None:
    arms, tasks = {"a": 1, "b": 2}, ("x", "y")
    parser = arg_parser("A bench.", arms, tasks, train=5, test=2, default_arms="a")
    assert choices(parser, parser.parse_args([]), arms, tasks) == (["a"], ["x", "y"])
    assert choices(parser, parser.parse_args(["--arms", "b,a", "--tasks", "y"]), arms, tasks) == (["b", "a"], ["y"])
    with pytest.raises(SystemExit):
        choices(parser, parser.parse_args(["--arms", "a,c"]), arms, tasks)
    assert "unknown arms or tasks ['c']: arms ['a', 'b']" in capsys.readouterr().err
    assert result_name("bench", parser, parser.parse_args([])) == "bench"
    assert result_name("bench", parser, parser.parse_args(["--arms", "b,a", "--steps", "9"])) == "bench_armsb-a_steps9"


def test_a_knob_reaches_the_corpus_and_the_results_name_and_a_bad_one_is_one_line(capsys) -> None:
    parser = arg_parser("A bench.", {"a": 1}, ("text",), train=5, test=2)
    add_knob_option(parser, "text")
    args = parser.parse_args(["--knob", "words=[ace,aec]", "--knob", "min_side=300", "--knob", "max_side=330"])
    assert knobs_of(parser, args, "text") == {"text": {"words": ["ace", "aec"], "min_side": 300, "max_side": 330}}
    assert result_name("bench", parser, args) == "bench_wordsace-aec_min_side300_max_side330"
    assert knobs_of(parser, parser.parse_args([]), "text") == {}
    for knob, says in (("max_side=100", "subsets.text: need 16 <= min_side <= max_side"),  # below the frontier's min
                       ("glyph_px=[3", "--knob 'glyph_px=[3': the value is not valid YAML"),
                       ("words", "--knob 'words': expected KEY[.FIELD...]=VALUE, e.g. min_side=300"),
                       ("colour=red", "subsets.text.colour: unknown key")):
        with pytest.raises(SystemExit):
            knobs_of(parser, parser.parse_args(["--knob", knob]), "text")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert says in err and ": error: --knob" in err
