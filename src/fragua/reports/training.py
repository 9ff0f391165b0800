"""A training run and a hyperparameter search as markdown."""

from __future__ import annotations

from typing import Any

from fragua.reports.markdown import table


def training_summary(report: Any) -> str:
    evals = [
        {"epoch": entry.get("epoch"), "step": entry.get("step"), "eval_loss": entry["eval_loss"]}
        for entry in report.log_history
        if "eval_loss" in entry
    ]
    lines = [
        f"# Training run `{report.run_id}`",
        "",
        f"- base model: `{report.base_model}` ({report.base_parameters:,} parameters), method `{report.method}`",
        f"- {report.global_step} optimiser steps, {report.epochs:g} epochs, {report.seconds:.1f} s",
        f"- train loss {report.train_loss}, validation loss {report.eval_loss}",
        f"- {report.examples} examples, {report.trained_tokens} answer tokens; {report.truncated} truncated, {report.dropped} dropped (no answer left after truncation)",
        f"- resumed from `{report.resumed_from}`" if report.resumed_from else "- started from scratch",
        f"- {report.batching}; {report.tokens_per_second or '-'} tokens/s (non-padding) over {report.num_processes} process(es)",
        f"- continued production version `{report.parent_version}`: {report.incremental}" if report.parent_version else "- trained from the base model",
        f"- added and trained tokens: {', '.join(report.added_tokens)}" if report.added_tokens else "",
        f"- stopped early at step {report.global_step} of {report.max_steps}; best checkpoint `{report.best_checkpoint}`" if report.stopped_early else "",
        f"- tracking run: {report.tracking_run or 'disabled'}",
        "",
        table(evals, ["epoch", "step", "eval_loss"]) if evals else "",
    ]
    return "\n".join(lines)


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
        table(trial_rows(result.trials), ["trial", "learning_rate", "r", "alpha", "epochs", "status", "eval_loss", "steps", "seconds", "run_id"]),
    ]
    return "\n".join(lines)
