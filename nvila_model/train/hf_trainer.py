"""transformers' Trainer specialised for NVILA: per-module LR groups, model-input filtering, NaN guard, callbacks."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from nvila_model.data.collate import model_inputs
from nvila_model.tracking import NullTracker, Tracker


class NonFiniteLossError(RuntimeError):
    """Raised when a step's loss is NaN or inf; the last periodic checkpoint is kept for resuming."""


def module_param_groups(model: torch.nn.Module, lr: dict[str, float], weight_decay: float) -> list[dict[str, Any]]:
    """One AdamW group per trained top-level module (vision_tower / projector / language_model) with its own LR."""
    groups = []
    for name, rate in lr.items():
        params = [p for p in model.get_submodule(name).parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"module {name!r} has an LR but no trainable parameters")
        groups.append({"params": params, "lr": rate, "weight_decay": weight_decay, "name": name})
    return groups


class NVILATrainer(Trainer):
    """Trainer whose optimizer has one parameter group per trained module and whose loss refuses NaN/inf."""

    def __init__(self, *args: Any, module_lrs: dict[str, float], **kwargs: Any):
        self.module_lrs = module_lrs
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = module_param_groups(self.model if model is None else model, self.module_lrs,
                                         self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(groups, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_and_outputs = super().compute_loss(model, model_inputs(inputs), True, num_items_in_batch)
        loss = loss_and_outputs[0]
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {self.state.global_step + 1}; "
                                     f"the last good checkpoint is kept in {self.args.output_dir}")
        return loss_and_outputs if return_outputs else loss


class StageCallback(TrainerCallback):
    """Measures throughput, forwards the Trainer's logs to the tracker and, with `progress_lines` (no terminal for a
    tqdm bar), prints one progress line per log step to stderr."""

    def __init__(self, tracker: Tracker | None = None, samples_per_step: int = 1, name: str = "train",
                 progress_lines: bool = False):
        self.tracker = tracker or NullTracker()
        self.samples_per_step = samples_per_step
        self.name = name
        self.progress_lines = progress_lines
        self.started = 0.0
        self.last_time, self.last_step, self.first_step = 0.0, 0, 0
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_time = time.perf_counter()
        self.first_step = self.last_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.perf_counter()
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
        steps = state.global_step - self.last_step
        if steps > 0 and now > self.last_time:
            metrics["samples_per_s"] = steps * self.samples_per_step / (now - self.last_time)
        self.last_time, self.last_step = now, state.global_step
        self.history.append({"step": state.global_step, **metrics})
        self.tracker.log_metrics(metrics, step=state.global_step)
        if self.progress_lines and state.is_world_process_zero:
            if "train_runtime" in metrics:  # the Trainer's closing summary
                line = (f"{self.name} done: {state.global_step} steps in {metrics['train_runtime']:.1f} s, "
                        f"mean loss {metrics.get('train_loss', float('nan')):.4g}")
            else:
                line = progress_line(self.name, state.global_step, state.max_steps, now - self.started, metrics,
                                     state.global_step - self.first_step)
            print(line, file=sys.stderr, flush=True)


def progress_line(name: str, step: int, max_steps: int, elapsed_s: float, metrics: dict[str, float],
                  steps_done: int | None = None) -> str:
    """One line of training progress, e.g. `image_sft step 20/120 (17%)  loss 2.31  lr 1.90e-04 ... eta 1m40s`;
    `steps_done` (default `step`) are the steps `elapsed_s` covers (fewer after a resume)."""
    parts = [f"{name} step {step}/{max_steps} ({step / max(max_steps, 1):.0%})"]
    for key, fmt in (("loss", ".4g"), ("grad_norm", ".3g"), ("learning_rate", ".2e"), ("samples_per_s", ".1f")):
        if key in metrics:
            parts.append(f"{'lr' if key == 'learning_rate' else key.replace('_per_', '/')} {metrics[key]:{fmt}}")
    done = step if steps_done is None else steps_done
    remaining = elapsed_s / done * (max_steps - step) if done > 0 else 0.0
    parts.append(f"elapsed {_duration(elapsed_s)} eta {_duration(remaining)}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
