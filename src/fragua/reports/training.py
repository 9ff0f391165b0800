"""A training run and a hyperparameter search as markdown."""

from __future__ import annotations

import math
from typing import Any

from fragua.reports.markdown import cell, display_rows, duration, number, table

# The trial rows' "seconds", shown as a duration.
TRIAL_DURATIONS = {"seconds": "time"}


def _same_loss(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def evaluation_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per validation during training. The evaluation after training repeats the last
    one (same step, same weights) and is dropped; when it differs (early stopping reloaded the
    best checkpoint) it is kept, marked as the final model's."""
    rows: list[dict[str, Any]] = []
    for entry in log_history:
        if "eval_loss" not in entry:
            continue
        epoch = entry.get("epoch")
        row = {"epoch": "-" if epoch is None else f"{epoch:.2f}", "step": entry.get("step"), "validation loss": entry["eval_loss"]}
        if rows and rows[-1]["step"] == row["step"]:
            if _same_loss(rows[-1]["validation loss"], row["validation loss"]):
                continue
            row["step"] = f"{cell(row['step'])} (final model)"
        rows.append(row)
    return rows


def _loss(value: float | None) -> str:
    return "-" if value is None else number(value)


def phase_times(phases: dict[str, float]) -> str:
    """Where a run's time went, e.g. "setup 8.5 s, training 3.4 s, evaluation 0.6 s, save 0.2 s"."""
    return ", ".join(f"{name} {duration(seconds)}" for name, seconds in phases.items())


def training_summary(report: Any) -> str:
    evals = evaluation_rows(report.log_history)
    throughput = f"{report.tokens_per_second:,.0f}" if report.tokens_per_second else "-"
    lines = [
        f"# Training run `{report.run_id}`",
        "",
        f"- base model: `{report.base_model}` ({report.base_parameters:,} parameters), method `{report.method}`",
        f"- {report.global_step:,} optimiser steps, {report.epochs:.2f} epochs, {duration(report.seconds)}",
        f"- time: {phase_times(report.phase_seconds)}" if report.phase_seconds else None,
        f"- train loss {_loss(report.train_loss)}, validation loss {_loss(report.eval_loss)}",
        f"- {report.examples:,} examples, {report.trained_tokens:,} answer tokens; {report.truncated:,} truncated, {report.dropped:,} dropped (no answer left after truncation)",
        f"- resumed from `{report.resumed_from}`" if report.resumed_from else "- started from scratch",
        f"- {report.batching}; {throughput} tokens/s (non-padding) over {report.num_processes} process(es)",
        f"- continued production version `{report.parent_version}`: {report.incremental}" if report.parent_version else "- trained from the base model",
        f"- added and trained tokens: {', '.join(report.added_tokens)}" if report.added_tokens else None,
        f"- stopped early at step {report.global_step} of {report.max_steps}; best checkpoint `{report.best_checkpoint}`" if report.stopped_early else None,
        f"- tracking run: {report.tracking_run or 'disabled'}",
        "",
        table(evals, ["epoch", "step", "validation loss"]) if evals else "",
    ]
    return "\n".join(line for line in lines if line is not None)


def hpo_summary(result: Any) -> str:
    """Markdown for a hyperparameter search: the winner and every trial."""
    from fragua.train.hpo import trial_rows

    best = result.best
    lines = [
        f"# Hyperparameter search on dataset `{result.dataset_id}`",
        "",
        (
            f"- best: trial {best.trial.number} (learning rate {best.trial.learning_rate:g}, r {best.trial.r}, alpha {best.trial.alpha}, "
            f"epochs {best.trial.epochs:g}) with validation loss **{best.eval_loss:.4f}**, run `{best.run_id}`"
            if best else "- no trial produced a validation loss"
        ),
        f"- validate and deploy it with `fragua validate --run {best.run_id}` and `fragua deploy --run {best.run_id}`" if best else "",
        f"- tracking run: {result.tracking_run or 'disabled'}",
        "",
        table(display_rows(trial_rows(result.trials), TRIAL_DURATIONS), ["trial", "learning_rate", "r", "alpha", "epochs", "status", "eval_loss", "steps", "time", "run_id"]),
    ]
    return "\n".join(lines)
