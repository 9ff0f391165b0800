"""PNG plots for validation reports: the training loss curve and per-domain metric bars.

Figures are built with matplotlib's object API on the Agg canvas, never pyplot, so plotting
needs no display and keeps no global state between runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from fragua.validate.scoring import SCORE_METRICS, Evaluation


def _points(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
            steps.append(entry["step"])
            values.append(float(value))
    return steps, values


def loss_curve(log_history: Sequence[dict[str, Any]], path: Path, *, title: str) -> Path | None:
    """Training loss and validation loss against optimiser step; None when nothing was logged."""
    from matplotlib.figure import Figure

    train_steps, train_loss = _points(log_history, "loss")
    eval_steps, eval_loss = _points(log_history, "eval_loss")
    if not train_loss and not eval_loss:
        return None
    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    if train_loss:
        axes.plot(train_steps, train_loss, marker=".", label="training loss")
    if eval_loss:
        axes.plot(eval_steps, eval_loss, marker="o", label="validation loss")
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("loss (answer tokens)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def metric_bars(evaluations: dict[str, Evaluation | None], path: Path, *, title: str) -> Path | None:
    """One panel per measured score: a group of bars per domain (and overall), one bar per model."""
    from matplotlib.figure import Figure

    models = {label: e for label, e in evaluations.items() if e is not None}
    metrics = [m for m in SCORE_METRICS if any(e.overall.value(m) is not None for e in models.values())]
    if not metrics:
        return None
    domains = ["overall", *sorted({d for e in models.values() for d in e.per_domain})]
    columns = min(2, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    panel_width = max(4.0, 1.0 + 0.45 * len(domains) * len(models))
    figure = Figure(figsize=(panel_width * columns, 0.6 + 2.8 * rows), dpi=100, layout="constrained")
    figure.suptitle(title)
    width = 0.8 / len(models)
    for panel, metric in enumerate(metrics, start=1):
        axes = figure.add_subplot(rows, columns, panel)
        for offset, (label, evaluation) in enumerate(models.items()):
            groups = {"overall": evaluation.overall, **evaluation.per_domain}
            values = [groups[d].value(metric) if d in groups else None for d in domains]
            heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
            bars = axes.bar([i + offset * width - 0.4 + width / 2 for i in range(len(domains))], heights, width, label=label)
            axes.bar_label(bars, labels=["-" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=1)
        axes.set_xticks(range(len(domains)), domains)
        axes.set_ylim(0, 1.1)
        axes.set_ylabel(metric)
        axes.grid(axis="y", alpha=0.3)
        if panel == 1:
            axes.legend(fontsize=8, loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
