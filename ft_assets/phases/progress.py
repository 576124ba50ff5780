"""Progress lines for the run log while a phase works: training every ``logging_steps``, inference per batch.

Framework-free: each meter writes through a ``log: Callable[[str], None]``: the Dagster step's
``context.log.info`` in process, the Pipes context's ``log.info`` in a subprocess or pod (which the
orchestrator relays into the same run log), ``print`` on the command line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

Log = Callable[[str], None]


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def remaining(elapsed: float, done: float, total: float) -> float:
    """Seconds left at the pace so far (NaN before any progress)."""
    return elapsed / done * (total - done) if done > 0 else math.nan


def training_progress(log: Log) -> Any:
    """A transformers ``TrainerCallback`` that logs one line per trainer log (every ``logging_steps``):
    step/total, loss, learning rate, trained tokens/s, elapsed and ETA (both for this run: a resumed
    run counts from its checkpoint)."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.first_step = 0
            self.first_tokens = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()
            self.first_step = state.global_step
            self.first_tokens = state.num_input_tokens_seen or 0
            resumed = f", resuming at step {state.global_step}" if state.global_step else ""
            log(f"training: {state.max_steps} steps{resumed}; a line every {args.logging_steps} steps")

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logs = logs or {}
            step, total = state.global_step, state.max_steps
            elapsed = time.perf_counter() - self.started
            if "eval_loss" in logs:
                log(f"validation at step {step}/{total}: eval loss {logs['eval_loss']:.4f}")
            if "loss" not in logs:
                return
            tokens = (state.num_input_tokens_seen or 0) - self.first_tokens
            speed = tokens / elapsed if elapsed > 0 else math.nan
            eta = remaining(elapsed, step - self.first_step, total - self.first_step)
            log(
                f"training step {step}/{total}: loss {logs['loss']:.4f}, "
                f"learning rate {logs.get('learning_rate', math.nan):.2e}, {speed:.0f} tokens/s, "
                f"elapsed {duration(elapsed)}, ETA {duration(eta)}"
            )

    return TrainingProgress()


class InferenceProgress:
    """Rows done out of ``total``, rows/s and ETA, logged after a batch at most every ``every_s`` seconds
    (and always after the last one)."""

    def __init__(self, total: int, log: Log, *, label: str = "inference", every_s: float = 5.0) -> None:
        self.total = total
        self.log = log
        self.label = label
        self.every_s = every_s
        self.done = 0
        self.started = time.perf_counter()
        self.last_line = -math.inf

    def start(self, batches: int, batch_size: int) -> None:
        """Log what is about to be generated, and start the clock."""
        self.started = time.perf_counter()
        self.log(f"{self.label}: {self.total} rows in {batches} batches of up to {batch_size}")

    def advance(self, rows: int) -> None:
        """Count ``rows`` more rows done."""
        self.done += rows
        now = time.perf_counter()
        if self.done < self.total and now - self.last_line < self.every_s:
            return
        self.last_line = now
        elapsed = now - self.started
        speed = self.done / elapsed if elapsed > 0 else math.nan
        share = self.done / self.total if self.total else 1.0
        self.log(
            f"{self.label}: {self.done}/{self.total} rows ({share:.0%}), {speed:.2f} rows/s, "
            f"elapsed {duration(elapsed)}, ETA {duration(remaining(elapsed, self.done, self.total))}"
        )
