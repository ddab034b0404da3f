"""The pruning sweep's pieces: its config, its points, the per-stage overrides it routes, and the comparison.

Flow modules are imported inside the tests: importing them at collection sets up Prefect's client settings
before the deployment test points them at its own server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.config import SweepConfig, load_sweep_config, parse_overrides
from tasks.routing import overrides

SFT = ("image_sft", "video_sft")

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"


def test_points_put_the_all_data_reference_first_and_once() -> None:
    from flows.sweep import SFT as SWEEP_SFT
    from flows.sweep import SHARED, sweep_points

    points = sweep_points([0.5, 1.0, 0.9, 0.5], ["deltaloss", "random"])
    assert points == [("all-data", 1.0), ("deltaloss", 0.9), ("deltaloss", 0.5), ("random", 0.9), ("random", 0.5)]
    assert sweep_points([0.7], ["random"]) == [("random", 0.7)]
    assert SWEEP_SFT == SFT and "token_pretrain" in SHARED and "prune" in SHARED


def test_sweep_config_loads_and_rejects_bad_settings() -> None:
    cfg = load_sweep_config(PARAMS)
    assert 1.0 in cfg.keep_ratios and set(cfg.methods) == {"deltaloss", "random"}
    assert set(cfg.epochs) == set(SFT)
    assert load_sweep_config(PARAMS, keep_ratios=[0.3], methods=None).keep_ratios == [0.3]
    for bad, match in (({"keep_ratios": [0.0]}, "not in"), ({"keep_ratios": [1.5]}, "not in"),
                       ({"methods": ["loss"]}, "unknown"), ({"methods": []}, "empty"),
                       ({"epochs": {"token_pretrain": 1}}, "shared by every point"),
                       ({"epochs": {"image_sft": 0}}, "positive")):
        with pytest.raises(ValueError, match=match):
            SweepConfig(**bad).validate()


def test_pipeline_overrides_reach_every_stage_reading_the_key() -> None:
    values = {"overrides": {"image_sft": {"epochs": 2.0, "max_steps": -1}, "model": {"preset": "small"}}}
    routed = overrides("image_sft", values, PARAMS)
    assert routed["image_sft"] == {"epochs": 2.0, "max_steps": -1} and routed["model"] == {"preset": "small"}
    assert "image_sft" not in overrides("video_sft", values, PARAMS)
    assert overrides("token_pretrain", values, PARAMS)["model"] == {"preset": "small"}
    with pytest.raises(ValueError, match=r"image_sft has no field\(s\) \['epoch'\]"):
        overrides("image_sft", {"overrides": {"image_sft": {"epoch": 2}}}, PARAMS)


def test_set_options_parse_into_per_key_overrides() -> None:
    assert parse_overrides(["image_sft.epochs=5", "image_sft.max_steps=-1", "prune.methods=[random]"]) == {
        "image_sft": {"epochs": 5, "max_steps": -1}, "prune": {"methods": ["random"]}}
    for bad in ("image_sft.epochs", "epochs=5", "score.bootstrap.share=0.1", ".x=1"):
        with pytest.raises(ValueError, match="expected KEY.FIELD=VALUE"):
            parse_overrides([bad])


def test_pipeline_refuses_overrides_no_stage_reads() -> None:
    from flows.pipeline import nvila_pipeline

    with pytest.raises(ValueError, match=r"no stage reads params key\(s\) \['imag_sft'\]"):
        nvila_pipeline.fn(overrides={"imag_sft": {"epochs": 1}})


def test_output_root_moves_sft_and_after_but_shares_pretraining() -> None:
    values = {"output_root": "runs/sweep/p"}
    assert overrides("image_sft", values, PARAMS)["image_sft"]["out_dir"] == "runs/sweep/p/image_sft"
    assert "init_from" not in overrides("image_sft", values, PARAMS)["image_sft"]  # stays runs/token_pretrain
    assert overrides("video_sft", values, PARAMS)["video_sft"]["init_from"] == "runs/sweep/p/image_sft"
    assert "token_pretrain" not in overrides("token_pretrain", values, PARAMS)


def _point(root: Path, name: str, method: str, ratio: float, acc: float, seconds: list[float]) -> dict:
    (root / name / "eval").mkdir(parents=True)
    (root / name / "eval/metrics.json").write_text(json.dumps({"acc_mean": acc, "chance_mean": 0.33}))
    dirs = []
    for stage, sec in zip(SFT, seconds, strict=True):
        folder = root / name / stage
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps({"train_seconds": sec, "global_steps": int(sec * 2),
                                                      "num_train_records": int(sec * 10)}))
        dirs.append(str(folder))
    return {"method": method, "keep_ratio": ratio, "eval": str(root / name / "eval"), "train_dirs": dirs}


def test_comparison_rows_are_relative_to_the_all_data_point(tmp_path: Path) -> None:
    from tasks.sweep import comparison_rows, markdown_table, plot

    points = [_point(tmp_path, "all", "all-data", 1.0, 0.6, [30.0, 10.0]),
              _point(tmp_path, "d5", "deltaloss", 0.5, 0.55, [15.0, 5.0]),
              _point(tmp_path, "r5", "random", 0.5, 0.5, [16.0, 4.0])]
    rows = comparison_rows(points)
    assert [r["train_seconds"] for r in rows] == [40.0, 20.0, 20.0]
    assert [r["train_steps"] for r in rows] == [80, 40, 40] and rows[1]["train_records"] == 200
    assert rows[1]["time_vs_all_data"] == pytest.approx(0.5)
    assert rows[1]["acc_mean_vs_all_data"] == pytest.approx(-0.05) and rows[2]["chance"] == 0.33
    table = markdown_table(rows, links=False)
    assert "| deltaloss | 0.5 | 0.5500 | -0.0500 | 0.3300 | 20.0 | 0.50x | 40 | 200 |" in table
    assert plot(rows, "acc_mean", tmp_path / "out").stat().st_size > 5_000

    no_reference = comparison_rows(points[1:])
    assert all(r["time_vs_all_data"] != r["time_vs_all_data"] for r in no_reference)  # NaN without a reference


def test_comparison_names_the_point_with_missing_outputs(tmp_path: Path) -> None:
    from tasks.sweep import comparison_rows

    point = _point(tmp_path, "d5", "deltaloss", 0.5, 0.55, [15.0, 5.0])
    with pytest.raises(ValueError, match="no 'acc_foo' in metrics.json of point deltaloss-0.5"):
        comparison_rows([point], metric="acc_foo")
    Path(point["train_dirs"][1], "meta.json").unlink()
    with pytest.raises(ValueError, match=r"video_sft/meta.json: no training record"):
        comparison_rows([point])
