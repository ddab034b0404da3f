"""The flow's stage scheduler: independent stages at once, each with the torch threads the stage graph gives it (never
what happens to run beside it), dependencies first, plan order among the ready ones; after a failure nothing new
starts and the first failure is raised; an interrupt stops what runs. Real threads stand in for the Prefect tasks
(`submit` returns a `concurrent.futures.Future`)."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect.exceptions import TerminationSignal

from tasks.dvc_stages import stage_graph
from tasks.stage_task import schedule, stage_threads

REPO = Path(__file__).resolve().parents[2]
# generate -> {score -> prune, projector_init -> token_pretrain} -> sft -> {eval, finetune -> eval_finetuned}
NEEDS = {"generate": set(), "score": {"generate"}, "prune": {"score"}, "projector_init": {"generate"},
         "token_pretrain": {"projector_init"}, "sft": {"prune", "token_pretrain"}, "eval": {"sft"},
         "finetune": {"sft"}, "eval_finetuned": {"finetune"}}
ORDER = list(NEEDS)


class Recorder:
    """A stand-in stage runner: each stage sleeps `seconds` (or raises), the log keeps (event, stage, threads)."""

    def __init__(self, seconds: dict[str, float], fail: set[str] = frozenset()):
        self.seconds, self.fail, self.log = seconds, fail, []
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(8)

    def run(self, stage: str, threads: int | None) -> str:
        with self.lock:
            self.log.append(("start", stage, threads))
        time.sleep(self.seconds.get(stage, 0.01))
        with self.lock:
            self.log.append(("end", stage, threads))
        if stage in self.fail:
            raise RuntimeError(f"stage {stage} failed")
        return f"{stage} done"

    def submit(self, stage: str, threads: int | None):
        return self.pool.submit(self.run, stage, threads)

    def most_at_once(self) -> int:
        now = best = 0
        for event, _, _ in self.log:
            now += 1 if event == "start" else -1
            best = max(best, now)
        return best

    def started(self) -> list[str]:
        return [stage for event, stage, _ in self.log if event == "start"]


def test_independent_stages_run_at_once_after_what_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tasks.stage_task.cpu_cores", lambda: 4)
    rec = Recorder({"score": 0.4, "projector_init": 0.1, "token_pretrain": 0.1})
    results = schedule(ORDER, NEEDS, 2, rec.submit, lambda: None)
    assert results == [f"{stage} done" for stage in ORDER]
    assert rec.most_at_once() == 2
    at = {event[:2]: i for i, event in enumerate(rec.log)}
    for stage, deps in NEEDS.items():
        assert all(at[("end", dep)] < at[("start", stage)] for dep in deps), stage
    # the pre-training chain went on while scoring ran
    assert at[("end", "token_pretrain")] < at[("end", "score")]
    threads = {stage: t for event, stage, t in rec.log if event == "start"}
    assert threads["generate"] is None and threads["sft"] is None, "alone: every core"
    assert threads["score"] == threads["projector_init"] == threads["eval"] == 2, "two at once: half the cores each"


def test_the_pipelines_scoring_runs_beside_its_pre_training() -> None:
    order, needs = stage_graph(REPO)
    rec = Recorder({"score": 0.3})
    schedule(order, needs, 2, rec.submit, lambda: None)
    at = {event[:2]: i for i, event in enumerate(rec.log)}
    for stage in ("projector_init", "vision_pretrain", "token_pretrain"):
        assert at[("start", "score")] < at[("end", stage)] < at[("end", "score")], stage
    assert at[("end", "token_pretrain")] < at[("start", "image_sft")] and rec.most_at_once() == 2


def test_a_stages_threads_follow_from_the_graph_not_from_what_runs_beside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tasks.stage_task.cpu_cores", lambda: 2)
    expected = {"generate": None, "sft": None, **dict.fromkeys(
        ("score", "prune", "projector_init", "token_pretrain", "eval", "finetune", "eval_finetuned"), 1)}
    assert stage_threads(NEEDS, 2, 2) == expected
    # a run of the pre-training chain alone (score not in its plan) computes it as the full run does
    rec = Recorder({})
    schedule(["generate", "projector_init", "token_pretrain"], NEEDS, 2, rec.submit, lambda: None)
    assert [(stage, t) for event, stage, t in rec.log if event == "start"] == [
        ("generate", None), ("projector_init", 1), ("token_pretrain", 1)]
    # and so does a full run where scoring ends long before the chain does (it does not get the freed core)
    rec = Recorder({"projector_init": 0.2, "token_pretrain": 0.2})
    schedule(ORDER, NEEDS, 2, rec.submit, lambda: None)
    at = {event[:2]: i for i, event in enumerate(rec.log)}
    assert at[("end", "prune")] < at[("start", "token_pretrain")]
    assert {stage: t for event, stage, t in rec.log if event == "start"} == expected


def test_the_pipelines_stages_that_can_run_at_once_share_the_cores() -> None:
    _, needs = stage_graph(REPO)
    threads = stage_threads(needs, 2, 2)
    shared = {stage for stage, t in threads.items() if t == 1}
    assert shared == {"score", "prune", "projector_init", "vision_pretrain", "token_pretrain", "eval", "finetune",
                      "quantize", "eval_quantized"}
    assert {threads[s] for s in ("generate", "validate", "tokenizer", "image_sft", "video_sft")} == {None}
    assert set(stage_threads(needs, 1, 2).values()) == {None}, "one stage at a time: every core"
    assert set(stage_threads(needs, 2, 8).values()) == {4, None}


def test_one_at_a_time_when_parallel_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tasks.stage_task.cpu_cores", lambda: 2)
    rec = Recorder({})
    schedule(ORDER, NEEDS, 1, rec.submit, lambda: None)
    assert rec.most_at_once() == 1 and rec.started() == ORDER
    assert {t for _, _, t in rec.log} == {None}


def test_after_a_failure_nothing_new_starts_what_runs_finishes_and_the_failure_is_raised() -> None:
    rec = Recorder({"score": 0.05, "projector_init": 0.3}, fail={"score"})
    with pytest.raises(RuntimeError, match="stage score failed"):
        schedule(ORDER, NEEDS, 2, rec.submit, lambda: None)
    assert rec.started() == ["generate", "score", "projector_init"]
    assert ("end", "projector_init") in [e[:2] for e in rec.log], "the running stage finished before the raise"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), TerminationSignal(signal.SIGTERM), RuntimeError("bug")],
                         ids=["ctrl-c", "sigterm", "error"])
def test_an_interrupt_stops_the_running_stages_before_it_is_raised(interrupt: BaseException) -> None:
    """Whatever ends the scheduler early (Ctrl-C; SIGTERM, which Prefect raises as TerminationSignal in a flow; an
    error of the flow's own), the running stages are stopped first: the flow then removes their workspace."""
    stopped, log, pool = threading.Event(), [], ThreadPoolExecutor(4)

    def run(stage: str) -> str:
        log.append(("start", stage))
        if stage == "score":
            stopped.wait(10)  # a long stage command, until the scheduler stops it
        log.append(("end", stage))
        return stage

    def submit(stage: str, threads: int | None):
        if stage == "token_pretrain":
            raise interrupt  # as the flow starts the next stage
        return pool.submit(run, stage)

    began = time.monotonic()
    with pytest.raises(type(interrupt)):
        schedule(ORDER, NEEDS, 2, submit, stopped.set)
    assert time.monotonic() - began < 5, "the scheduler stopped the running stage instead of waiting it out"
    assert log[-1] == ("end", "score"), "raised only once the running stage had ended"
    assert [stage for event, stage in log if event == "start"] == ["generate", "score", "projector_init"]
