"""Pipeline-level tasks: open/close the MLflow parent run, plots, the Prefect Markdown artifact, model registry."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks.stage_task import RunContext
from tasks.tracking import MlflowTracker, flatten, run_url, start_run, ui_url

ARTIFACT_KEY = "nvila-eval"
KIND_TAG = "kind"  # "pipeline" on the parent run of a pipeline run: `tags.kind = 'pipeline'` lists them


@task(name="open-pipeline-run")
def open_pipeline_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> RunContext:
    """Create the parent MLflow run of this pipeline run, tagged with its Prefect ids and `tags`."""
    tags = {KIND_TAG: "pipeline", "prefect.flow_run_id": str(flow_run.id or ""),
            "prefect.flow_run_name": str(flow_run.name or ""), **tags}
    tracker = start_run(experiment, run_name, tags=tags)
    tracker.log_params(params)
    return RunContext(experiment, tracker.run_id)


@task(name="close-pipeline-run")
def close_pipeline_run(run: RunContext, status: str, tags: dict[str, str] | None = None) -> None:
    """Tag the parent run (DVC experiment, output hashes) and close it with an MLflow status."""
    parent = run.parent()
    if tags:
        parent.set_tags(tags)
    parent.end(status)


def read_metrics(path: str | Path | None) -> dict[str, float]:
    """Flattened numeric metrics of a `metrics.json` (or the eval folder holding one); empty when absent."""
    path = Path(path or "")
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        return {}
    flat = flatten(json.loads(path.read_text()))
    return {k: float(v) for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def read_answers(folder: str | Path) -> list[dict[str, Any]]:
    """Each test answer of an evaluation folder's `predictions.jsonl` (`id`, `subset`, `correct`); empty if absent."""
    path = Path(folder) / "predictions.jsonl"
    return parse_answers(path.read_text()) if path.is_file() else []


def parse_answers(text: str) -> list[dict[str, Any]]:
    """The `id`, `subset` and `correct` of each row of a `predictions.jsonl` text."""
    rows = (json.loads(line) for line in text.splitlines() if line.strip())
    return [{"id": r["id"], "subset": r["subset"], "correct": bool(r["correct"])} for r in rows]


def _loss_curves(tracker: MlflowTracker, out: Path) -> Path | None:
    """One PNG of every `*loss*` metric history of the stage child runs, step on x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = tracker.client.get_run(tracker.run_id)
    children = tracker.client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'", order_by=["attributes.start_time"]
    )
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for child in children:
        for key in [k for k in child.data.metrics if "loss" in k.lower()]:
            history = tracker.client.get_metric_history(child.info.run_id, key)
            if len(history) > 1:
                ax.plot([m.step for m in history], [m.value for m in history], label=f"{child.info.run_name}/{key}")
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="step", ylabel="loss", title="Training loss per stage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    plt.close(fig)
    return out / "loss_curves.png"


def _accuracy_bars(columns: dict[str, dict[str, float]], out: Path) -> Path | None:
    """Bar chart of per-subset accuracy, one bar group per model variant (e.g. trained, quantized)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for metrics in columns.values() for k in metrics if "acc" in k.lower()})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.9), 4.5))
    width = 0.8 / max(1, len(columns))
    for i, (variant, metrics) in enumerate(columns.items()):
        ax.bar([x + i * width for x in range(len(keys))], [metrics.get(k, 0.0) for k in keys], width, label=variant)
    ax.set_xticks([x + width * (len(columns) - 1) / 2 for x in range(len(keys))], keys, rotation=30, ha="right")
    ax.set(ylabel="accuracy", ylim=(0, 1), title="Accuracy per subset")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_subset.png", dpi=100)
    plt.close(fig)
    return out / "accuracy_per_subset.png"


def markdown_table(columns: dict[str, dict[str, float]]) -> str:
    """Metrics as a Markdown table: one row per metric, one column per model variant."""
    if not columns:
        return "_No evaluation ran in this pipeline run._\n"
    keys = sorted({k for metrics in columns.values() for k in metrics})
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key in keys:
        cells = [f"{m[key]:.4f}" if key in m else "" for m in columns.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@task(name="publish-report")
def publish_report(run: RunContext, columns: dict[str, dict[str, float]], experiment: str,
                   stages: dict[str, str]) -> str:
    """Log the eval metrics and plots to the parent run and publish the Prefect Markdown artifact (key
    `nvila-eval`); returns its Markdown. Called only by runs that evaluated, so a partial run leaves the latest
    evaluation artifact alone."""
    parent = run.parent()
    for name, metrics in columns.items():
        parent.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for png in (_loss_curves(parent, Path(tmp)), _accuracy_bars(columns, Path(tmp))):
            if png is not None:
                parent.log_artifact(png, "plots")
    link = run_url(parent)
    stage_lines = "\n".join(f"- `{stage}`: {how}" for stage, how in stages.items())
    markdown = (
        f"# NVILA pipeline: evaluation\n\n{markdown_table(columns)}\n"
        f"MLflow run: [{run.parent_run_id}]({link}) (UI at {ui_url()}; start it with `nvila ui`)\n\n"
        f"DVC experiment: `{experiment}` (`dvc exp show`, `dvc exp apply {experiment}`)\n\n"
        f"## Stages\n{stage_lines or '- none'}\n"
    )
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description="NVILA evaluation metrics")
    return markdown


@task(name="register-model")
def register_model(run: RunContext, checkpoint: Path, name: str, metric: str, value: float | None) -> str:
    """Log `checkpoint` as an MLflow pyfunc model in the parent run, register it as `name`, refresh alias `best`."""
    from tasks.registry import log_and_register, set_best_alias

    version = log_and_register(run.parent(), checkpoint, name, metric, value)
    set_best_alias(name)
    return version
