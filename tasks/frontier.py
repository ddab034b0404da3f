"""The efficient frontier's report: accuracy against training time, optimizer steps and TTFT, per variant, with the
paper's goals judged (files, an MLflow summary run, a Prefect artifact)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.frontier_goals import evaluate_goals, verdict
from tasks.frontier_plot import plot_frontier
from tasks.tracking import MlflowTracker, run_status, run_url, start_run

ARTIFACT_KEY = "nvila-frontier"
TRAINING = ("projector_init", "vision_pretrain", "token_pretrain", "image_sft", "video_sft")
EFFICIENCY = ("prefill_ms", "visual_tokens_per_sample", "decode_tokens_per_s", "num_samples")


def subsets_of(points: list[dict[str, Any]]) -> list[str]:
    """Every subset any variant was evaluated on, sorted."""
    return sorted({k[4:] for p in points for k in p["metrics"] if k.startswith("acc_") and k != "acc_mean"})


def standard_error(metrics: dict[str, float], subsets: list[str]) -> float:
    """One binomial standard error of the mean-over-subsets accuracy, taking the test samples as equally split over
    the subsets (exact when they are): the size of a difference the test set can resolve."""
    present = [s for s in subsets if f"acc_{s}" in metrics]
    if not present or not metrics.get("num_samples"):
        return math.nan
    per_subset = metrics["num_samples"] / len(present)
    variance = sum(metrics[f"acc_{s}"] * (1 - metrics[f"acc_{s}"]) / per_subset for s in present)
    return math.sqrt(variance) / len(present)


def frontier_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: accuracy (mean, per subset, chance, standard error), training cost of its model (seconds
    on this machine and optimizer steps over every training stage, the peer's one stage), the DeltaLoss scoring
    cost when its data was pruned by score, the wall seconds of its pipeline run (every stage it computed; what an
    earlier variant left in DVC's cache is restored in seconds), TTFT (prefill latency at batch 1), visual tokens,
    and where it lives.

    A point is what the frontier collected from a variant's pipeline run: `variant`, `label`, `group`, the eval
    `metrics`, the run's `cost` per stage, `stage_seconds` (each stage's wall seconds in this run), `uses_scores`,
    `defects_removed` (the share of the corpus's injected label noise and duplicates its `prune` removed: what the
    scores found, against a random choice's share), `video_frames` / `video_pool`, experiment and MLflow run.
    """
    subsets = subsets_of(points)
    rows = []
    for p in points:
        m, cost = p["metrics"], p["cost"]
        if "acc_mean" not in m:
            raise ValueError(f"frontier variant {p['variant']}: its evaluation has no acc_mean")
        trained = [c for stage, c in cost.items() if stage in TRAINING or stage.startswith("peer@")]
        row = {"variant": p["variant"], "label": p["label"], "group": p["group"], "acc_mean": m["acc_mean"],
               "se": standard_error(m, subsets), "chance_mean": m.get("chance_mean", math.nan),
               "train_seconds": sum(c["train_seconds"] for c in trained),
               "train_steps": sum(c["train_steps"] for c in trained),
               "score_seconds": cost["score"]["train_seconds"] if p["uses_scores"] and "score" in cost else 0.0,
               "run_seconds": sum(p["stage_seconds"].values()),
               "noise_removed": p["defects_removed"].get("noise", math.nan),
               "duplicate_removed": p["defects_removed"].get("duplicate", math.nan),
               "video_frames": p["video_frames"], "video_pool": p["video_pool"],
               **{k: m.get(k, math.nan) for k in EFFICIENCY},
               "experiment": p.get("experiment", ""), "mlflow_run_id": p.get("mlflow_run_id", "")}
        for s in subsets:
            if f"acc_{s}" in m:
                row[f"acc_{s}"] = m[f"acc_{s}"]
                row[f"chance_{s}"] = m.get(f"chance_{s}", math.nan)
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def bold_held(text: str) -> str:
    """A verdict as the goals table shows it: a goal held beyond the test set's noise in bold."""
    return f"**{text}**" if text == "held" else text


def markdown_report(rows: list[dict[str, Any]], goals: list[dict[str, Any]], subsets: list[str],
                    header: str = "", links: bool = True) -> str:
    """The variants table (accuracy in %, per subset with chance in the header) and the goals table."""
    chance = {s: next((r[f"chance_{s}"] for r in rows if f"chance_{s}" in r), math.nan) for s in subsets}
    cols = ["variant", "acc_mean ± s.e.", "chance", *[f"{s} ({_pct(chance[s])})" for s in subsets], "train s",
            "steps", "run s", "noise / duplicates removed %", "TTFT ms", "visual tokens",
            "DVC experiment"] + (["MLflow run"] if links else [])
    lines = [header, "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"] if header else \
        ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in rows:
        cells = [f"**{r['variant']}**", f"{_pct(r['acc_mean'])} ± {_pct(r['se'])}", _pct(r["chance_mean"]),
                 *[_pct(r.get(f"acc_{s}", math.nan)) for s in subsets],
                 f"{r['train_seconds']:.0f}" + (f" (+{r['score_seconds']:.0f} scoring)" if r["score_seconds"] else ""),
                 f"{r['train_steps']:.0f}", f"{r['run_seconds']:.0f}",
                 f"{_pct(r['noise_removed'])} / {_pct(r['duplicate_removed'])}", f"{r['prefill_ms']:.1f}",
                 f"{r['visual_tokens_per_sample']:.0f}",
                 f"`{r['experiment']}`"]
        if links:
            run_id = r["mlflow_run_id"]
            cells.append(f"[{run_id[:8]}]({run_url(MlflowTracker(run_id))})" if run_id else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| variant | what it is |", "|---|---|", *[f"| {r['variant']} | {r['label']} |" for r in rows],
              "", "| goal | held | numbers |", "|---|---|---|"]
    lines += [f"| {g['claim']} | {bold_held(verdict(g))} | {g['numbers']} |" for g in goals]
    return "\n".join(lines) + "\n"


def report_header(about: dict[str, Any]) -> str:
    """The Markdown report's title (mode, wall minutes) and how to read it."""
    return (f"# The efficient frontier ({about.get('mode', '')}, {about.get('wall_seconds', 0) / 60:.1f} min)\n\n"
            "Accuracy in % on the test split (exact match), chance in the column header; training time in seconds on "
            "this machine summed over the variant's training stages; run s: wall seconds of the variant's pipeline "
            "run (stages an earlier variant computed are restored from DVC's cache); TTFT: prefill latency at batch "
            "1. A goal's verdict is its point estimates; `within test noise` when its paired accuracy difference "
            "(same test answers) is within 1.96 standard errors of the claim's threshold: the test set does not "
            "decide it. Training-seed spread is not in that error.\n")


def write_report(points: list[dict[str, Any]], video_subsets: list[str], out_dir: str | Path,
                 about: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Path]]:
    """Rows, goals, and `frontier.{json,md,png}` in `out_dir`; `about` (mode, settings, wall time) goes into the
    JSON and the Markdown's header."""
    rows = frontier_rows(points)
    goals = evaluate_goals(rows, video_subsets, {p["variant"]: p.get("answers", []) for p in points})
    subsets = subsets_of(points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": plot_frontier(rows, subsets, out / "frontier.png"), "json": out / "frontier.json",
             "md": out / "frontier.md"}
    paths["json"].write_text(json.dumps({**about, "rows": rows, "goals": goals}, indent=2, default=str))
    paths["md"].write_text(markdown_report(rows, goals, subsets, report_header(about), links=False))
    return rows, goals, paths


@task(name="frontier-report")
def publish_frontier(points: list[dict[str, Any]], video_subsets: list[str], experiment: str, out_dir: str,
                     about: dict[str, Any]) -> dict[str, Any]:
    """Write the report files, log them and every variant's figures to an MLflow run `frontier` (experiment
    `experiment`, tagged kind=frontier) and publish the Markdown as the Prefect artifact `nvila-frontier`."""
    rows, goals, paths = write_report(points, video_subsets, out_dir, about)
    tracker: MlflowTracker = start_run(experiment, "frontier", tags={"kind": "frontier", "mode": about["mode"]})
    ok = False
    try:
        tracker.log_params({"variants": ",".join(r["variant"] for r in rows), "mode": about["mode"]})
        for r in rows:
            tracker.log_metrics({f"{r['variant']}.{k}": float(r[k]) for k in (
                "acc_mean", "train_seconds", "train_steps", "prefill_ms", "visual_tokens_per_sample",
                "noise_removed", "duplicate_removed") if not math.isnan(r[k])})  # NaN: a corpus without defect tags
        tracker.log_metrics({f"goal.{g['goal']}": float(g["held"]) for g in goals if g["held"] is not None})
        tracker.log_metrics({f"goal.{g['goal']}.resolved": float(g["resolved"]) for g in goals
                             if g.get("resolved") is not None})
        tracker.log_metrics({"wall_seconds": float(about["wall_seconds"])})
        for path in paths.values():
            tracker.log_artifact(path, "frontier")
        create_markdown_artifact(
            key=ARTIFACT_KEY, description="accuracy against training time and TTFT per variant; the paper's goals",
            markdown=markdown_report(rows, goals, subsets_of(points), "# NVILA: the efficient frontier\n")
            + f"\nPlots `frontier/frontier.png` in MLflow run [{tracker.run_id[:8]}]({run_url(tracker)}) and "
            f"`{paths['png']}`.\n")
        ok = True
    finally:
        tracker.end(run_status(ok))
    return {"rows": rows, "goals": goals, "files": {k: str(v) for k, v in paths.items()},
            "mlflow_run_id": tracker.run_id}
