"""The paper's claims as goals the frontier measures: each held, not held, or not measured, with its numbers.

An effect that does not show is a finding: the thresholds are the paper's claims made small, fixed here, and never
tuned to the results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nvila_model.evaluate import Z95, paired_difference
from nvila_model.train.config import METRIC_DECIMALS

Row = dict[str, Any]
WITHIN_DELTALOSS = 0.01   # "DeltaLoss keep 0.5 within 1 point of all data"
WITHIN_STC = 0.02         # "2x2 STC within 2 points of uncompressed"
TOKEN_RATIO = 4.0         # "... at 4x fewer visual tokens"
WELL_ABOVE = 0.10         # "Dynamic-S2 well above fixed resize on text reading": 10 points
# metrics.json rounds accuracies (METRIC_DECIMALS, 5), so means of rounded accuracies over equal correct counts can
# differ by about 1e-5 (51 of 135 video answers each: 37.778 against 37.777 in a full run); a gap up to ten rounding
# steps is a tie. One answer more is 1/135 = 7e-3.
TIE = 10 * 10.0 ** -METRIC_DECIMALS
# A comparison is resolved when the claim's boundary lies outside the 95% interval of the paired difference: the test
# set then decides it, whichever way. Its noise only: a second training seed moves a variant by more (README: Where
# it stands).
VIDEO = "video"  # in COMPARISONS: accuracy over the corpus's video subsets


def _above(a: float, b: float) -> bool:
    """a is above b by more than rounding: an exact tie is not an effect."""
    return a - b > TIE


def _at_least(a: float, b: float) -> bool:
    return a - b >= -TIE


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def video_accuracy(row: Row, video_subsets: list[str]) -> float:
    """Mean accuracy over the video subsets the row was evaluated on."""
    values = [row[f"acc_{s}"] for s in video_subsets if f"acc_{s}" in row]
    return sum(values) / len(values) if values else float("nan")


def deltaloss_goal(r: dict[str, Row], _: list[str]) -> tuple[bool, str]:
    full, delta, rand = r["nvila"], r["deltaloss_0.5"], r["random_0.5"]
    held = (_at_least(delta["acc_mean"], full["acc_mean"] - WITHIN_DELTALOSS)
            and _above(delta["acc_mean"], rand["acc_mean"]))
    time_ratio = delta["train_seconds"] / full["train_seconds"]
    return held, (f"acc_mean: all data {_pct(full['acc_mean'])}, DeltaLoss 0.5 {_pct(delta['acc_mean'])}, random 0.5 "
                  f"{_pct(rand['acc_mean'])}; training time vs all data {time_ratio:.2f}x "
                  f"(+ scoring {delta['score_seconds']:.0f} s); label noise removed: DeltaLoss "
                  f"{_pct(delta['noise_removed'])}%, random {_pct(rand['noise_removed'])}%")


def stc_goal(r: dict[str, Row], _: list[str]) -> tuple[bool, str]:
    stc, dense = r["nvila"], r["s2_uncompressed"]
    ratio = dense["visual_tokens_per_sample"] / stc["visual_tokens_per_sample"]
    held = (_at_least(stc["acc_mean"], dense["acc_mean"] - WITHIN_STC) and ratio >= 0.95 * TOKEN_RATIO
            and stc["train_seconds"] < dense["train_seconds"])
    return held, (f"acc_mean: 2x2 STC {_pct(stc['acc_mean'])}, uncompressed {_pct(dense['acc_mean'])}; visual tokens "
                  f"{stc['visual_tokens_per_sample']:.0f} vs {dense['visual_tokens_per_sample']:.0f} ({ratio:.2f}x "
                  f"fewer); training {stc['train_seconds']:.0f} s vs {dense['train_seconds']:.0f} s; TTFT "
                  f"{stc['prefill_ms']:.1f} ms vs {dense['prefill_ms']:.1f} ms")


def s2_goal(r: dict[str, Row], _: list[str]) -> tuple[bool, str]:
    s2, fixed = r["s2_uncompressed"], r["fixed_uncompressed"]
    gain = s2["acc_text"] - fixed["acc_text"]
    return _at_least(gain, WELL_ABOVE), (
        f"acc_text: Dynamic-S2 {_pct(s2['acc_text'])}, fixed resize {_pct(fixed['acc_text'])} "
        f"({100 * gain:+.1f} points; chance {_pct(s2.get('chance_text', float('nan')))})")


def frames_goal(r: dict[str, Row], video: list[str]) -> tuple[bool, str]:
    dense, sparse = r["nvila"], r["sparse_frames"]
    equal = dense["video_frames"] / dense["video_pool"] == sparse["video_frames"] / sparse["video_pool"]
    a, b = video_accuracy(dense, video), video_accuracy(sparse, video)
    flashes = f"; flashes {_pct(dense['acc_flashes'])} vs {_pct(sparse['acc_flashes'])}" if "acc_flashes" in dense \
        and "acc_flashes" in sparse else ""
    return equal and _above(a, b), (
        f"video accuracy ({', '.join(video)}): {dense['video_frames']} frames averaged by {dense['video_pool']} "
        f"{_pct(a)}, {sparse['video_frames']} frames by {sparse['video_pool']} {_pct(b)}{flashes}; equal video "
        f"tokens: {equal}")


def peer_goal(r: dict[str, Row], _: list[str]) -> tuple[bool, str]:
    ours, peer = r["nvila"], r["peer"]
    held = _above(ours["acc_mean"], peer["acc_mean"]) and ours["train_seconds"] <= peer["train_seconds"]
    return held, (f"acc_mean: NVILA {_pct(ours['acc_mean'])}, peer {_pct(peer['acc_mean'])}; training "
                  f"{ours['train_seconds']:.0f} s ({ours['train_steps']:.0f} steps) vs {peer['train_seconds']:.0f} s "
                  f"({peer['train_steps']:.0f} steps); TTFT {ours['prefill_ms']:.1f} ms vs {peer['prefill_ms']:.1f} ms")


def vep_goal(r: dict[str, Row], _: list[str]) -> tuple[bool, str]:
    lite, bare = r["nvila_lite"], r["nvila_lite_no_vep"]
    return _above(lite["acc_mean"], bare["acc_mean"]), (
        f"acc_mean: NVILA-Lite {_pct(lite['acc_mean'])}, without vision-encoder pre-training "
        f"{_pct(bare['acc_mean'])}; 2x2 NVILA {_pct(r['nvila']['acc_mean'])}" if "nvila" in r else
        f"acc_mean: NVILA-Lite {_pct(lite['acc_mean'])}, without vision-encoder pre-training {_pct(bare['acc_mean'])}")


# (name, claim, the variants it compares, how it is judged)
GOALS: list[tuple[str, str, tuple[str, ...], Callable[[dict[str, Row], list[str]], tuple[bool, str]]]] = [
    ("deltaloss", "DeltaLoss keep 0.5 within 1 point of all data and above random 0.5",
     ("nvila", "deltaloss_0.5", "random_0.5"), deltaloss_goal),
    ("stc", "2x2 STC within 2 points of uncompressed (both Dynamic-S2), at 4x fewer visual tokens, and faster",
     ("nvila", "s2_uncompressed"), stc_goal),
    ("dynamic_s2", "Dynamic-S2 well above (>= 10 points) fixed resize on text reading (both uncompressed)",
     ("s2_uncompressed", "fixed_uncompressed"), s2_goal),
    ("frames", "dense frames with temporal averaging above sparse frames at equal video tokens",
     ("nvila", "sparse_frames"), frames_goal),
    ("peer", "NVILA above the peer in accuracy at equal or lower training time", ("nvila", "peer"), peer_goal),
    ("vision_pretrain", "vision-encoder pre-training wins back 3x3 STC accuracy (NVILA-Lite above Lite without it)",
     ("nvila_lite", "nvila_lite_no_vep"), vep_goal),
]


# Each goal's claims on accuracy, paired on the same test answers: (a, b, the subsets the accuracy averages, None for
# every subset, threshold): the claim is accuracy(a) - accuracy(b) above the threshold (-margin for "within").
COMPARISONS: dict[str, list[tuple[str, str, list[str] | str | None, float]]] = {
    "deltaloss": [("deltaloss_0.5", "nvila", None, -WITHIN_DELTALOSS), ("deltaloss_0.5", "random_0.5", None, 0.0)],
    "stc": [("nvila", "s2_uncompressed", None, -WITHIN_STC)],
    "dynamic_s2": [("s2_uncompressed", "fixed_uncompressed", ["text"], WELL_ABOVE)],
    "frames": [("nvila", "sparse_frames", VIDEO, 0.0)],
    "peer": [("nvila", "peer", None, 0.0)],
    "vision_pretrain": [("nvila_lite", "nvila_lite_no_vep", None, 0.0)],
}


def paired_checks(goal: str, answers: dict[str, list[dict[str, Any]]], video_subsets: list[str]) -> list[dict]:
    """The goal's accuracy comparisons on the answers both variants gave (`predictions.jsonl` rows per variant):
    the difference, its standard error and the claim's threshold; empty when a variant's answers are missing."""
    checks = []
    for a, b, subsets, threshold in COMPARISONS[goal]:
        if not answers.get(a) or not answers.get(b):
            return []
        pair = paired_difference(answers[a], answers[b], video_subsets if subsets == VIDEO else subsets)
        checks.append({"a": a, "b": b, "threshold": threshold, **pair})
    return checks


def resolution(held: bool, checks: list[dict]) -> bool | None:
    """Whether the test set decides the verdict: a goal held with every comparison's boundary outside its 95%
    interval, or not held with a comparison beyond it against the claim (or with every comparison met at its point
    estimate, so that a condition other than accuracy failed). None without paired answers."""
    if not checks:
        return None
    margin = [(c["diff"] - c["threshold"], Z95 * c["se"], c["threshold"]) for c in checks]
    if held:
        return all(gap > noise for gap, noise, _ in margin)
    # met at the point estimate as the judges read it: "above" (threshold 0) beyond rounding, the others at least
    met = [_above(gap, 0.0) if threshold == 0 else _at_least(gap, 0.0) for gap, _, threshold in margin]
    return any(gap < -noise for gap, noise, _ in margin) or all(met)


def verdict(goal: dict[str, Any]) -> str:
    """held / not held (the point estimates), `within test noise` when the test set does not decide it, or not
    measured."""
    if goal["held"] is None:
        return "not measured"
    text = "held" if goal["held"] else "not held"
    return text + (" within test noise" if goal.get("resolved") is False else "")


def _paired_numbers(checks: list[dict]) -> str:
    return "; paired on the same test answers: " + ", ".join(
        f"{c['a']} - {c['b']} {100 * c['diff']:+.1f} ± {100 * c['se']:.1f} points (s.e., {c['paired']:.0f} answers)"
        for c in checks)


def evaluate_goals(rows: list[Row], video_subsets: list[str],
                   answers: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Each goal: held (True / False) at the point estimates, or None when one of its variants did not run or every
    model it compares is at or below chance, with its numbers; with the variants' test `answers`, also its paired
    comparisons and whether the test set resolves the verdict (`resolved`, see `resolution`)."""
    by_name = {row["variant"]: row for row in rows}
    out = []
    for name, claim, needs, judge in GOALS:
        missing = [v for v in needs if v not in by_name]
        if missing:
            out.append({"goal": name, "claim": claim, "held": None, "numbers": f"not measured: {missing} did not run"})
            continue
        held, numbers = judge(by_name, video_subsets)
        if not any(_above(by_name[v]["acc_mean"], by_name[v]["chance_mean"]) for v in needs):
            # untrained models (e.g. --quick's few steps): no comparison of them says anything about the claim
            out.append({"goal": name, "claim": claim, "held": None,
                        "numbers": f"not measured: every model compared is at or below chance; {numbers}"})
            continue
        checks = paired_checks(name, answers or {}, video_subsets)
        out.append({"goal": name, "claim": claim, "held": bool(held), "resolved": resolution(bool(held), checks),
                    "numbers": numbers + (_paired_numbers(checks) if checks else ""), "paired": checks})
    return out
