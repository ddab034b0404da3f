"""The frontier's figure: accuracy against training time, optimizer steps and TTFT, and accuracy per subset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

GROUP_COLOURS = {"model": "tab:blue", "peer": "tab:red", "video": "tab:green", "data": "tab:orange"}
AXES = (("train_seconds", "training time (s, this machine)"), ("train_steps", "optimizer steps"),
        ("prefill_ms", "TTFT: prefill latency at batch 1 (ms)"))


def _scatter(ax: Any, rows: list[dict[str, Any]], key: str, label: str) -> None:
    for r in rows:
        colour = GROUP_COLOURS.get(r["group"], "tab:grey")
        se = 0.0 if math.isnan(r["se"]) else r["se"]
        ax.errorbar([r[key]], [r["acc_mean"]], yerr=[se], fmt="o", color=colour, capsize=3,
                    markersize=8 if r["variant"] == "nvila" else 6)
        ax.annotate(r["variant"], (r[key], r["acc_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    chance = [r["chance_mean"] for r in rows if not math.isnan(r["chance_mean"])]
    if chance:
        ax.axhline(chance[0], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.legend(fontsize=7, loc="lower right")
    ax.set(xlabel=label, ylabel="mean accuracy", title=f"accuracy vs {label.split(' (')[0].split(':')[0]}")


def _per_subset(ax: Any, fig: Any, rows: list[dict[str, Any]], subsets: list[str]) -> None:
    import numpy as np

    values = np.array([[r.get(f"acc_{s}", math.nan) for s in subsets] for r in rows], dtype=float)
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not math.isnan(values[i, j]):
                ax.text(j, i, f"{100 * values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < 0.6 else "black")
    chance = [next((r[f"chance_{s}"] for r in rows if f"chance_{s}" in r), math.nan) for s in subsets]
    ax.set_xticks(range(len(subsets)), [f"{s}\n(chance {100 * c:.0f})" for s, c in zip(subsets, chance,
                                                                                         strict=True)], fontsize=7)
    ax.set_yticks(range(len(rows)), [r["variant"] for r in rows], fontsize=7)
    ax.set_title("accuracy per subset (%)")
    fig.colorbar(image, ax=ax, fraction=0.03)


def plot_frontier(rows: list[dict[str, Any]], subsets: list[str], out: Path) -> Path:
    """Write the 2x2 figure to `out`: accuracy (± one standard error, chance dotted) against training seconds,
    optimizer steps and TTFT, one colour per variant group; and the per-subset accuracy of every variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    for ax, (key, label) in zip(axes.flat, AXES, strict=False):
        _scatter(ax, rows, key, label)
    _per_subset(axes.flat[3], fig, rows, subsets)
    fig.suptitle("NVILA's efficient frontier, reproduced small (colours: " +
                 ", ".join(f"{g} {c.removeprefix('tab:')}" for g, c in GROUP_COLOURS.items()) + ")")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
