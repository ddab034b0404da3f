"""The pruning sweep's pieces: its config, its points, and the comparison table and plot.

Flow modules are imported inside the tests: importing them at collection sets up Prefect's client settings
before the deployment test points them at its own server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import SweepConfig, load_sweep_config

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"


def test_points_put_the_all_data_reference_first_and_once() -> None:
    from flows.sweep import sweep_points

    points = sweep_points([0.5, 1.0, 0.9, 0.5], ["deltaloss", "random"])
    assert points == [("all-data", 1.0), ("deltaloss", 0.9), ("deltaloss", 0.5), ("random", 0.9), ("random", 0.5)]
    assert sweep_points([0.7], ["random"]) == [("random", 0.7)]


def test_sweep_config_loads_and_rejects_bad_settings() -> None:
    cfg = load_sweep_config(PARAMS)
    assert 1.0 in cfg.keep_ratios and set(cfg.methods) == {"deltaloss", "random"}
    assert set(cfg.epochs) == {"image_sft", "video_sft"}
    assert load_sweep_config(PARAMS, keep_ratios=[0.3], methods=None).keep_ratios == [0.3]
    for bad, match in (({"keep_ratios": [0.0]}, "not in"), ({"keep_ratios": [1.5]}, "not in"),
                       ({"methods": ["loss"]}, "'deltaloss' or 'random'"), ({"methods": []}, "at least 1"),
                       ({"epochs": {"token_pretrain": 1}}, "'image_sft' or 'video_sft'"),
                       ({"epochs": {"image_sft": 0}}, "positive")):
        with pytest.raises(ValueError, match=match):
            SweepConfig(**bad)


def _point(method: str, ratio: float, acc: float, seconds: float) -> dict:
    return {"method": method, "keep_ratio": ratio, "metrics": {"acc_mean": acc, "chance_mean": 0.33},
            "cost": {"train_seconds": seconds, "train_steps": seconds * 2, "train_records": seconds * 10},
            "experiment": f"exp-{method}-{ratio}", "mlflow_run_id": ""}


def test_comparison_rows_are_relative_to_the_all_data_point(tmp_path: Path) -> None:
    from tasks.sweep import comparison_rows, markdown_table, plot

    points = [_point("all-data", 1.0, 0.6, 40.0), _point("deltaloss", 0.5, 0.55, 20.0),
              _point("random", 0.5, 0.5, 20.0)]
    rows = comparison_rows(points)
    assert [r["train_seconds"] for r in rows] == [40.0, 20.0, 20.0]
    assert rows[1]["time_vs_all_data"] == pytest.approx(0.5)
    assert rows[1]["acc_mean_vs_all_data"] == pytest.approx(-0.05) and rows[2]["chance"] == 0.33
    table = markdown_table(rows, links=False)
    assert "| deltaloss | 0.5 | 0.5500 | -0.0500 | 0.3300 | 20.0 | 0.50x | 40 | 200 | `exp-deltaloss-0.5` |" in table
    assert plot(rows, "acc_mean", tmp_path / "out").stat().st_size > 5_000
    no_reference = comparison_rows(points[1:])
    assert all(r["time_vs_all_data"] != r["time_vs_all_data"] for r in no_reference)  # NaN without a reference


def test_comparison_names_the_point_without_its_metric() -> None:
    from tasks.sweep import comparison_rows

    with pytest.raises(ValueError, match="sweep point deltaloss-0.5: its eval has no 'acc_foo'"):
        comparison_rows([_point("deltaloss", 0.5, 0.55, 20.0)], metric="acc_foo")
