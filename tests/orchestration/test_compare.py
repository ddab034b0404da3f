"""`nvila pipeline compare`: two runs' test answers side by side, the paired difference per subset and for the mean,
from evaluation folders here (from DVC experiments: tests/orchestration/test_pipeline_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from nvila_model.evaluate import paired_table

REPO = Path(__file__).resolve().parents[2]


def _eval_folder(folder: Path, right: dict[str, int], n: int = 40) -> Path:
    """An evaluation folder whose predictions.jsonl has n answers per subset, the first `right[subset]` correct."""
    folder.mkdir(parents=True)
    rows = [{"id": f"{s}-{i}", "subset": s, "answer": "x", "prediction": "x" if i < k else "y", "correct": i < k}
            for s, k in right.items() for i in range(n)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_paired_table_gives_each_subset_and_the_mean_and_marks_what_the_test_set_resolves(tmp_path) -> None:
    from tasks.report import read_answers

    a = read_answers(_eval_folder(tmp_path / "a", {"chart": 30, "text": 11}))
    b = read_answers(_eval_folder(tmp_path / "b", {"chart": 10, "text": 10}))
    table = {row["subset"]: row for row in paired_table(a, b)}
    assert list(table) == ["chart", "text", "mean"]
    assert (table["chart"]["a"], table["chart"]["b"], table["chart"]["diff"]) == (0.75, 0.25, 0.5)
    assert table["chart"]["resolved"] and not table["text"]["resolved"], "+50 points of 40 answers, +2.5 not"
    assert table["mean"]["diff"] == pytest.approx((0.5 + 0.025) / 2) and table["mean"]["paired"] == 80


def test_compare_prints_the_paired_table_and_refuses_what_holds_no_answers(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    a = _eval_folder(tmp_path / "a", {"chart": 30, "text": 11})
    b = _eval_folder(tmp_path / "b", {"chart": 10, "text": 10})
    result = CliRunner().invoke(app, ["pipeline", "compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    # chart: 20 of 40 answers differ by 1 (sample variance 40 / 4 / 39 over 40: s.e. 8.0); text: 1 of 40 (s.e. 2.5);
    # the mean: the root of both variances summed, halved
    assert "| chart | 75.0 | 25.0 | +50.0 ± 8.0 * | 40 |" in result.output
    assert "| text | 27.5 | 25.0 | +2.5 ± 2.5 | 40 |" in result.output
    assert "| mean | 51.2 | 25.0 | +26.2 ± 4.2 * | 80 |" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["pipeline", "compare", str(a), str(tmp_path / "empty")])
    assert result.exit_code == 2 and "empty: no predictions.jsonl" in result.output
