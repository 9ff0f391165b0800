"""The validation report's forgetting sections: general benchmarks (base / production /
candidate / Δ) and learning and forgetting on the team's own trained examples."""

from __future__ import annotations

import math

from fragua.reports.markdown import number, table
from fragua.validate.benchmarks import BenchmarkComparison, BenchmarkScore
from fragua.validate.retention import Retention
from fragua.validate.scoring import MetricSet


def _score(score: BenchmarkScore | None) -> str:
    if score is None:
        return "-"
    return number(score.value) + (f" ± {number(score.stderr)}" if score.stderr is not None else "")


def _delta(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or not (math.isfinite(ours) and math.isfinite(theirs)):
        return "-"
    return f"{ours - theirs:+,.4f}"


def benchmark_section(comparison: BenchmarkComparison, failed_metrics: list[str]) -> list[str]:
    """The benchmark table and, when the forgetting gate failed (``failed_metrics`` of the
    decision), what to do about it."""
    production_label = f"production {comparison.production_version}" if comparison.production_version else None
    columns = ["task", "metric", "questions", "base", *([production_label] if production_label else []), "candidate"]
    columns += [*(["Δ vs production"] if production_label else []), "Δ vs base"]
    rows = []
    for task in comparison.tasks:
        ours = comparison.candidate[task]
        base = (comparison.base or {}).get(task)
        production = (comparison.production or {}).get(task)
        row = {
            "task": task, "metric": ours.metric + ("" if ours.higher_is_better else " (lower is better)"),
            "questions": f"{ours.questions} of {ours.available}", "base": _score(base), "candidate": _score(ours),
            "Δ vs base": _delta(ours.value, base.value if base else None),
        }
        if production_label:
            row[production_label] = _score(production)
            row["Δ vs production"] = _delta(ours.value, production.value if production else None)
        rows.append(row)
    lines = [
        "## General benchmarks (forgetting guard)",
        "",
        f"lm-evaluation-harness {comparison.candidate[comparison.tasks[0]].lm_eval_version}, scores ± standard error; "
        + ("the candidate may fall at most validate.max_benchmark_drop below production (see Decision)."
           if production_label else "no production version yet: nothing to gate against."),
        "",
        table(rows, columns),
    ]
    forgotten = [task for task in comparison.tasks if f"{task}/{comparison.candidate[task].metric}" in failed_metrics]
    if forgotten:
        tasks = ", ".join(forgotten)
        if comparison.parent_version:
            lines += [
                f"**Forgetting**: this incremental version (continuing `{comparison.parent_version}`, train.replay_ratio "
                f"{comparison.replay_ratio}) dropped more than validate.max_benchmark_drop on {tasks}. Replay more older examples per "
                "new one (raise train.replay_ratio), train fewer epochs or with a lower learning rate, or retrain from the base "
                "model (train.incremental = false).",
                "",
            ]
        else:
            lines += [
                f"**Forgetting**: the candidate dropped more than validate.max_benchmark_drop below production on {tasks}. Train fewer "
                "epochs or with a lower learning rate or LoRA rank, or mix general data into the training set.",
                "",
            ]
    return lines


def _metric_value(scores: MetricSet | None, metric: str) -> float | None:
    return None if scores is None else scores.value(metric)


def retention_section(retention: Retention, primary_metric: str) -> list[str]:
    """Per group (trained / new / older) and metric: base, the previous version, the candidate."""
    previous = f"{'parent' if retention.incremental else 'production'} {retention.previous_version}" if retention.previous_version else None
    models = [("base", "base"), *([("previous", previous)] if previous else []), ("candidate", "candidate")]
    reference = "previous" if previous else "base"
    delta = f"Δ vs {previous.split()[0] if previous else 'base'}"
    rows = []
    for group in retention.groups:
        metrics = ["loss", primary_metric, "mc_accuracy"]
        measured = [m for m in dict.fromkeys(metrics) if any(_metric_value(s, m) is not None for s in group.scores.values())]
        for metric in measured:
            row = {"examples": f"{group.name} ({group.n})", "metric": metric, "better": "lower" if metric == "loss" else "higher"}
            for key, label in models:
                row[label] = _metric_value(group.scores.get(key), metric)
            row[delta] = _delta(_metric_value(group.scores.get("candidate"), metric), _metric_value(group.scores.get(reference), metric))
            rows.append(row)
    described = "; ".join(f"**{group.name}**: {group.description}" for group in retention.groups)
    return [
        "## Learning and forgetting on the team's data",
        "",
        f"Fixed samples (validate.retention_samples, seed {retention.seed}) scored like validation. {described}.",
        "",
        table(rows, ["examples", "metric", "better", *(label for _, label in models), delta]),
    ]
