"""Compare pruning sweep points: accuracy against training time, as a table and a plot (MLflow + Prefect)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.report import read_metrics
from tasks.stages import TRAIN_STAGES
from tasks.tracking import MlflowTracker, client, run_status, run_url, start_run

ARTIFACT_KEY = "nvila-pruning-sweep"


def train_seconds(parent_run_id: str) -> float:
    """Total `train_seconds` over the training-stage child runs of one pipeline run."""
    mlflow_client = client()
    run = mlflow_client.get_run(parent_run_id)
    children = mlflow_client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return sum(r.data.metrics.get("train_seconds", 0.0) for r in children if r.info.run_name in TRAIN_STAGES)


def _plot(rows: list[dict[str, Any]], metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in sorted({r["method"] for r in rows}):
        points = sorted((r["train_seconds"], r[metric], r["keep_ratio"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        for seconds, value, ratio in points:
            ax.annotate(f"{ratio:g}", (seconds, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="training time (s, five stages)", ylabel=metric, title="Pruning: accuracy vs training time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pruning_sweep.png", dpi=100)
    plt.close(fig)
    return out / "pruning_sweep.png"


@task(name="compare-sweep-points")
def compare_points(points: list[dict[str, Any]], experiment: str, metric: str = "acc_mean") -> list[dict[str, Any]]:
    """One row per (method, keep ratio): metric and training time; logged to an MLflow run and a Prefect artifact."""
    rows = [{**p, metric: read_metrics(p.get("eval")).get(metric, float("nan")),
             "train_seconds": train_seconds(p["mlflow_run_id"])} for p in points]
    tracker: MlflowTracker = start_run(experiment, "pruning-sweep", tags={"kind": "sweep"})
    ok = False
    try:
        for i, row in enumerate(rows):
            prefix = f"{row['method']}-{row['keep_ratio']:g}"
            tracker.log_metrics({f"{prefix}.{metric}": row[metric], f"{prefix}.train_seconds": row["train_seconds"]},
                                step=i)
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifact(_plot(rows, metric, Path(tmp)), "plots")
        lines = [f"| method | keep ratio | {metric} | train seconds | MLflow run |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['keep_ratio']:g} | {r[metric]:.4f} | {r['train_seconds']:.1f} | "
                  f"[{r['mlflow_run_id'][:8]}]({run_url(MlflowTracker(r['mlflow_run_id']))}) |" for r in rows]
        create_markdown_artifact(key=ARTIFACT_KEY, markdown="# DeltaLoss pruning sweep\n\n" + "\n".join(lines)
                                 + f"\n\nPlot: MLflow run [{tracker.run_id}]({run_url(tracker)}) `plots/`\n",
                                 description="accuracy against training time per keep ratio and method")
        ok = True
    finally:
        tracker.end(run_status(ok))
    return rows
