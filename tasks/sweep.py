"""Compare pruning sweep points: accuracy against SFT training time, as a table and a plot (files, MLflow, Prefect)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.tracking import MlflowTracker, run_status, run_url, start_run

ARTIFACT_KEY = "nvila-pruning-sweep"
REFERENCE = "all-data"  # the method label of the keep-1.0 point


def comparison_rows(points: list[dict[str, Any]], metric: str = "acc_mean") -> list[dict[str, Any]]:
    """One row per point: its metric, the chance level, SFT cost, and time and metric relative to all data.

    A point is what the sweep collected from its pipeline run: method, keep ratio, the run's eval metrics
    (`metrics`), the SFT stages' cost (`cost`), its DVC experiment and MLflow run.
    """
    rows = []
    for point in points:
        metrics = point["metrics"]
        if metric not in metrics:
            raise ValueError(f"sweep point {point['method']}-{point['keep_ratio']:g}: its eval has no {metric!r}")
        chance = metric.replace("acc_", "chance_", 1)
        rows.append({"method": point["method"], "keep_ratio": float(point["keep_ratio"]), metric: metrics[metric],
                     "chance": metrics.get(chance, math.nan), **point["cost"],
                     "experiment": point.get("experiment", ""), "mlflow_run_id": point.get("mlflow_run_id", "")})
    reference = next((r for r in rows if r["method"] == REFERENCE), None)
    for row in rows:
        row["time_vs_all_data"] = row["train_seconds"] / reference["train_seconds"] if reference else math.nan
        row[f"{metric}_vs_all_data"] = row[metric] - reference[metric] if reference else math.nan
    return rows


def markdown_table(rows: list[dict[str, Any]], metric: str = "acc_mean", links: bool = True) -> str:
    """The comparison as a Markdown table (MLflow run links when `links`)."""
    head = (f"| method | keep ratio | {metric} | vs all data | chance | SFT seconds | vs all data | SFT steps "
            "| records | DVC experiment |")
    lines = [head + (" MLflow run |" if links else ""), "|---" * (10 + links) + "|"]
    for r in rows:
        cells = [r["method"], f"{r['keep_ratio']:g}", f"{r[metric]:.4f}", f"{r[f'{metric}_vs_all_data']:+.4f}",
                 f"{r['chance']:.4f}", f"{r['train_seconds']:.1f}", f"{r['time_vs_all_data']:.2f}x",
                 f"{r['train_steps']:.0f}", f"{r['train_records']:.0f}", f"`{r['experiment']}`"]
        if links:
            run_id = r["mlflow_run_id"]
            cells.append(f"[{run_id[:8]}]({run_url(MlflowTracker(run_id))})" if run_id else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], metric: str, out: Path) -> Path:
    """Accuracy against SFT training time: one line per method, the all-data point and chance as references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in sorted({r["method"] for r in rows} - {REFERENCE}):
        points = sorted((r["train_seconds"], r[metric], r["keep_ratio"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        for seconds, value, ratio in points:
            ax.annotate(f"{ratio:g}", (seconds, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for r in rows:
        if r["method"] == REFERENCE:
            ax.scatter([r["train_seconds"]], [r[metric]], marker="*", s=160, color="black", label="all data", zorder=3)
            ax.axhline(r[metric], color="black", linestyle="--", linewidth=0.8)
    chance = [r["chance"] for r in rows if not math.isnan(r["chance"])]
    if chance:
        ax.axhline(chance[0], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(xlabel="SFT training time (s)", ylabel=metric, title="DeltaLoss pruning: accuracy vs training time")
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "pruning_sweep.png", dpi=100)
    plt.close(fig)
    return out / "pruning_sweep.png"


@task(name="compare-sweep-points")
def compare_points(points: list[dict[str, Any]], experiment: str, out_dir: str,
                   metric: str = "acc_mean") -> list[dict[str, Any]]:
    """Write `comparison.{json,md}` and `pruning_sweep.png` under `out_dir`; log them and the per-point figures
    to an MLflow run `pruning-sweep` and publish the table as the Prefect artifact `nvila-pruning-sweep`."""
    rows = comparison_rows(points, metric)
    out = Path(out_dir)
    png = plot(rows, metric, out)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    (out / "comparison.md").write_text(markdown_table(rows, metric, links=False) + "\n")
    tracker: MlflowTracker = start_run(experiment, "pruning-sweep", tags={"kind": "sweep"})
    ok = False
    try:
        tracker.log_params({"metric": metric, "points": ",".join(f"{r['method']}-{r['keep_ratio']:g}" for r in rows)})
        for row in rows:
            prefix = f"{row['method']}-{row['keep_ratio']:g}"
            tracker.log_metrics({f"{prefix}.{metric}": row[metric], f"{prefix}.train_seconds": row["train_seconds"],
                                 f"{prefix}.train_steps": row["train_steps"]})
        for path in (png, out / "comparison.json", out / "comparison.md"):
            tracker.log_artifact(path, "sweep")
        create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown="# DeltaLoss pruning sweep\n\n" + markdown_table(rows, metric)
            + f"\n\nPlot `sweep/pruning_sweep.png` in MLflow run [{tracker.run_id[:8]}]({run_url(tracker)}) "
            f"and in `{png}`.\n",
            description="accuracy against SFT training time per keep ratio and method",
        )
        ok = True
    finally:
        tracker.end(run_status(ok))
    return rows
