"""The Trainer callbacks of one run: progress events (step, loss, tokens/s, ETA), the time budget, checkpoint markers, early stopping.

The callback classes are made inside functions so importing this module does not import
transformers (the CLI and the flows import the training modules without training).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from fragua.settings import TrainSettings
from fragua.train.checkpoints import checkpoint_marker

logger = logging.getLogger("fragua.train")


def announce_progress(event: dict[str, Any]) -> None:
    """Log a progress event; the record carries it as ``record.progress`` (the CLI's progress bar reads it)."""
    logger.info(
        "step %s/%s loss %.4f lr %.2e %s tokens/s eta %ss",
        event["step"], event["max_steps"], event["loss"], event["learning_rate"],
        event.get("tokens_per_second") or "-", event["eta_seconds"],
        extra={"progress": event},
    )


class Throughput:
    """Non-padding tokens per second between two logging steps."""

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.tokens = 0

    def reset(self, tokens: int) -> None:
        self.since, self.tokens = time.monotonic(), tokens

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` spent on other work (an evaluation) out of the current interval."""
        self.since += seconds

    def rate(self, tokens: int) -> float | None:
        elapsed = time.monotonic() - self.since
        rate = (tokens - self.tokens) / elapsed if elapsed > 0 and tokens > self.tokens else None
        self.reset(tokens)
        return round(rate, 1) if rate is not None else None


def progress_reporter(progress: Callable[[dict[str, Any]], None] | None, throughput: Throughput) -> Any:
    """A TrainerCallback announcing every training log as a progress event, and measuring this session's tokens/s."""
    from transformers import TrainerCallback

    class ProgressReporter(TrainerCallback):
        """Step, loss, learning rate, tokens/s and ETA for logs and the caller's progress hook."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.evaluating = 0.0
            self.first_step = 0
            self.first_tokens = 0
            self.session_tokens_per_second: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.evaluating = time.monotonic(), 0.0
            self.first_step, self.first_tokens = state.global_step, state.num_input_tokens_seen
            throughput.reset(state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            # The last step is logged whatever logging_steps says: its loss is the run's train loss.
            if state.global_step >= state.max_steps:
                control.should_log = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            # Validation passes inside the loop are not training throughput.
            seconds = (metrics or {}).get("eval_runtime", 0.0)
            self.evaluating += seconds
            throughput.pause(seconds)

        def on_train_end(self, args, state, control, **kwargs):
            elapsed = time.monotonic() - self.started - self.evaluating
            tokens = state.num_input_tokens_seen - self.first_tokens
            self.session_tokens_per_second = round(tokens / elapsed, 1) if tokens > 0 and elapsed > 0 else None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            done = state.global_step - self.first_step
            elapsed = time.monotonic() - self.started
            remaining = (state.max_steps - state.global_step) * elapsed / done if done else math.nan
            event = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "tokens_per_second": logs.get("tokens_per_second"),
                "eta_seconds": round(remaining, 1),
            }
            announce_progress(event)
            if progress:
                progress(event)

    return ProgressReporter()


def time_budget(deadline: float | None) -> Any:
    """A TrainerCallback that stops training at ``deadline`` (a ``time.time()`` value; hyperparameter search trials)."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stops training at a wall-clock deadline."""

        def __init__(self) -> None:
            self.reached = False

        def on_step_end(self, args, state, control, **kwargs):
            if deadline is not None and time.time() >= deadline:
                self.reached = control.should_training_stop = control.should_log = True

    return TimeBudget()


@dataclass
class RunCallbacks:
    """What one run hands the Trainer (``all``, in the order the Trainer calls them) and what its report reads afterwards."""

    throughput: Throughput
    reporter: Any
    time_budget: Any
    all: list[Any]


def setup_callbacks(
    settings: TrainSettings, *, progress: Callable[[dict[str, Any]], None] | None, deadline: float | None, has_eval: bool,
    extra: list[Any] | None,
) -> RunCallbacks:
    """Checkpoint markers, progress, the time budget, the caller's ``extra`` callbacks, then early stopping when it applies."""
    from transformers import EarlyStoppingCallback

    throughput = Throughput()
    marker, reporter, budget = checkpoint_marker(), progress_reporter(progress, throughput), time_budget(deadline)
    callbacks = [marker, reporter, budget, *(extra or [])]
    if has_eval and settings.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(settings.early_stopping_patience, settings.early_stopping_threshold))
    return RunCallbacks(throughput, reporter, budget, callbacks)
