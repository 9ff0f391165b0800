"""The validation report: candidate against production and base, the gates' decision, sample answers."""

from __future__ import annotations

import math
from typing import Any

from fragua.reports.forgetting import benchmark_section, retention_section
from fragua.reports.judging import judge_section, verdict_note, versus_production_section
from fragua.reports.markdown import Cell, clip, escape, finite, plot, table
from fragua.validate.benchmarks import BenchmarkComparison
from fragua.validate.drift import ReferenceComparison
from fragua.validate.gates import Decision
from fragua.validate.pairwise import HeadToHead
from fragua.validate.retention import Retention
from fragua.validate.scoring import SCORE_METRICS, Evaluation, ItemResult

ALL_COLUMNS = ("n", "loss", "perplexity", *SCORE_METRICS)
PLOT_TITLES = {"loss_curve": "Training and validation loss", "metrics_by_domain": "Metrics per domain"}
# Characters per question, reference and prediction in the artifact's sample-answers table (the
# report file keeps them whole). The old Prefect UI never wraps a table cell: the three texts
# share one cell, a line each, so the table fits beside its side panel in a 1400 px window.
SAMPLE_CELL_CHARS = 60
SAMPLE_TEXTS = ("question", "reference", "prediction")


def measured_columns(evaluations: list[Evaluation | None]) -> list[str]:
    """n, loss, perplexity and every score any of the evaluations has."""
    present = {m for e in evaluations if e for m in e.overall.measured()}
    return ["n", "loss", "perplexity", *[m for m in SCORE_METRICS if m in present]]


def comparison_rows(evaluations: dict[str, Evaluation | None]) -> list[dict[str, Any]]:
    """One row per model and domain (overall first), every metric: the table artifact's rows."""
    rows = []
    for label, evaluation in evaluations.items():
        if evaluation is None:
            continue
        for domain, metrics in [("overall", evaluation.overall), *evaluation.per_domain.items()]:
            rows.append({"model": label, "domain": domain, **{c: finite(getattr(metrics, c)) for c in ALL_COLUMNS}})
    return rows


def _delta(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or not (math.isfinite(ours) and math.isfinite(theirs)):
        return "-"
    return f"{ours - theirs:+,.4f}"


def overall_comparison(candidate: Evaluation, production: Evaluation | None, production_label: str, base: Evaluation | None) -> str:
    """Candidate vs production vs base, one row per metric, with differences."""
    columns = ["metric", "better", "candidate"]
    if production:
        columns += [production_label, "Δ vs production"]
    if base:
        columns += ["base", "Δ vs base"]
    rows = []
    for metric in measured_columns([candidate, production, base])[1:]:
        ours = candidate.overall.value(metric)
        row = {"metric": metric, "better": "lower" if metric in ("loss", "perplexity") else "higher", "candidate": ours}
        if production:
            row[production_label] = production.overall.value(metric)
            row["Δ vs production"] = _delta(ours, row[production_label])
        if base:
            row["base"] = base.overall.value(metric)
            row["Δ vs base"] = _delta(ours, row["base"])
        rows.append(row)
    return table(rows, columns)


def reference_comparison_table(reference: ReferenceComparison) -> str:
    """Candidate vs the drift gate's reference, on the questions both were scored on."""
    kind = "reference" if reference.pinned else "best"
    label, delta = f"{kind} {reference.version}", f"Δ vs {kind}"
    rows = []
    for metric in [m for m in ("loss", *SCORE_METRICS) if reference.candidate.value(m) is not None or reference.reference.value(m) is not None]:
        ours, theirs = reference.candidate.value(metric), reference.reference.value(metric)
        rows.append({"metric": metric, "better": "lower" if metric == "loss" else "higher", "candidate": ours, label: theirs, delta: _delta(ours, theirs)})
    return table(rows, ["metric", "better", "candidate", label, delta])


def _sample_scores(sample: ItemResult) -> list[str]:
    if sample.chosen is not None:
        verdict = "" if sample.mc_correct is None else (" (right)" if sample.mc_correct else " (wrong)")
        return [f"chose {sample.chosen}{verdict}", f"per char {sample.chosen_norm}"]
    scores = (("F1", sample.token_f1), ("ROUGE-L", sample.rouge_l), ("EM", sample.exact_match), ("num", sample.numeric_match))
    return [*(f"{label} {value:.2f}" for label, value in scores if value is not None), *verdict_note(sample)] or ["-"]


def sample_table(samples: list[ItemResult], *, compact: bool) -> str:
    """The sample answers, whole (the report file) or ``compact`` (the artifact): texts cut to
    SAMPLE_CELL_CHARS and stacked in one cell, the scores stacked in another."""
    if not compact:
        rows = [{**{name: getattr(s, name) for name in ("domain", *SAMPLE_TEXTS)}, "scores": ", ".join(_sample_scores(s))} for s in samples]
        return table(rows, ["domain", *SAMPLE_TEXTS, "scores"])
    rows = [
        {
            "domain": s.domain,
            "sample": Cell("<br>".join(f"**{name}** {escape(clip(getattr(s, name) or '-', SAMPLE_CELL_CHARS))}" for name in SAMPLE_TEXTS)),
            "scores": Cell("<br>".join(escape(score) for score in _sample_scores(s))),
        }
        for s in samples
    ]
    return table(rows, ["domain", "sample", "scores"])


def validation_report(
    *,
    run_id: str,
    dataset_id: str,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
    decision: Decision,
    reference: ReferenceComparison | None = None,
    plots: dict[str, str] | None = None,
    artifact: bool = False,
    versus_production: HeadToHead | None = None,
    benchmarks: BenchmarkComparison | None = None,
    retention: Retention | None = None,
) -> str:
    """The validation report. ``plots`` maps a plot name to its file, a path relative to the
    report. ``artifact``: the Prefect UI's version, which cannot open the run folder: ``plots``
    are paths it reads to inline the images, and long sample answers are cut."""
    verdict = "PASSED" if decision.passed else "FAILED"
    overall = candidate.overall
    production_label = f"production {production_version}" if production_version else "production"
    primary = "not measured" if decision.candidate is None else f"**{decision.candidate:.4f}**"
    lines = [
        f"# Validation of run `{run_id}`: {verdict}",
        "",
        "## Summary",
        "",
        f"- dataset version: `{dataset_id}`, {overall.n} validation examples "
        f"({overall.n_generated} free-form, {overall.n_choice} multiple-choice, {overall.n_numeric} with a numeric answer)",
        f"- primary metric: `{decision.primary_metric}` = {primary}",
        f"- compared with `{production_version}` (production) and the base model on the same examples"
        if production_version else "- no production version yet: compared with the base model only",
        (f"- drift guard: compared with {'validate.reference_version' if reference.pinned else 'the best promoted version'} "
         f"`{reference.version}` on the {reference.shared} validation questions both were scored on")
        if reference else "- drift guard: no promoted version shares validation questions with the candidate yet",
        f"- verdict: {'promotable' if decision.passed else 'not promotable: ' + ', '.join(decision.failed_metrics)}",
        "",
        "## Decision",
        "",
        *[f"- {reason}" for reason in decision.reasons],
        "",
        "## Candidate vs production vs base",
        "",
        overall_comparison(candidate, production, production_label, base),
        *([(f"## Candidate vs {'reference' if reference.pinned else 'best promoted version'} `{reference.version}` "
            f"({reference.shared} shared questions)"), "", reference_comparison_table(reference)] if reference else []),
        *(benchmark_section(benchmarks, decision.failed_metrics) if benchmarks else []),
        *(retention_section(retention, decision.primary_metric) if retention else []),
        "## Per domain",
        "",
        table(
            comparison_rows({"candidate": candidate, production_label: production, "base": base}),
            ["model", "domain", *measured_columns([candidate, production, base])],
        ),
        "",
        *judge_section({"candidate": candidate, production_label: production, "base": base}),
        *versus_production_section(versus_production, production_label, compact=artifact),
    ]
    if plots:
        lines += ["## Plots", ""]
        for name, location in plots.items():
            title = PLOT_TITLES.get(name, name)
            lines += [plot(title, location, inline=artifact), ""]
    lines += ["## Sample answers", "", sample_table(candidate.samples, compact=artifact)]
    if artifact:
        lines.append(f"Texts cut at {SAMPLE_CELL_CHARS} characters; the run's `validation/report.md` has them whole.")
    return "\n".join(lines)
