"""Promotion gates: a pure decision over metrics measured on one validation set."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from fragua.settings import ValidateSettings
from fragua.validate.benchmarks import BenchmarkComparison, benchmark_gates
from fragua.validate.drift import ReferenceComparison
from fragua.validate.pairwise import WinRate
from fragua.validate.scoring import HIGHER_IS_BETTER, MEASURED_ON, MetricSet


class Decision(BaseModel):
    passed: bool
    reasons: list[str] = Field(description="One line per gate, failed ones first, each naming its metric and threshold.")
    primary_metric: str
    candidate: float | None = Field(description="The candidate's primary metric; None when the validation set cannot measure it.")
    production_version: str | None = Field(None, description="The production version the candidate was compared with.")
    failed_metrics: list[str] = Field(default_factory=list, description="Metrics of the failed gates, for tools that act on them.")
    best_version: str | None = Field(None, description="The best promoted (or pinned reference) version the drift gate compared with.")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _unmeasured(metric: str) -> str:
    return f"{metric} was not measured: the validation set has no {MEASURED_ON.get(metric, 'items for it')}"


def decide(
    candidate: MetricSet,
    settings: ValidateSettings,
    *,
    base: MetricSet | None = None,
    production: MetricSet | None = None,
    production_version: str | None = None,
    reference: ReferenceComparison | None = None,
    win_rate: WinRate | None = None,
    benchmarks: BenchmarkComparison | None = None,
) -> Decision:
    """Every gate is checked and reported, so a failure lists all its causes at once.

    Gates: the primary metric reaches validate.min_score and each validate.min_metrics entry
    its minimum; perplexity stays under validate.max_perplexity; the candidate beats the base
    model on validate.beat_base_metrics; and none of the gated scores drops more than
    validate.regression_tolerance below the production version's, nor more than
    validate.max_drop_from_best below the reference's (the best promoted version, or
    validate.reference_version) on the questions both were scored on; the judge's win rate
    against production reaches validate.min_win_rate; and no validate.benchmarks score drops
    more than validate.max_benchmark_drop below the production version's.
    """
    failures: list[str] = []
    passes: list[str] = []
    failed_metrics: list[str] = []

    def gate(ok: bool, metric: str, text: str) -> None:
        if ok:
            passes.append("PASS " + text)
        else:
            failures.append("FAIL " + text)
            if metric not in failed_metrics:
                failed_metrics.append(metric)

    minimums = {settings.primary_metric: (settings.min_score, "validate.min_score")}
    for metric, floor in settings.min_metrics.items():
        if metric != settings.primary_metric or floor > settings.min_score:
            minimums[metric] = (floor, f"validate.min_metrics.{metric}")
    for metric, (floor, setting) in minimums.items():
        score = candidate.value(metric)
        if score is None:
            gate(False, metric, f"{_unmeasured(metric)} ({setting} needs it)")
            continue
        ok = score >= floor
        gate(ok, metric, f"{metric} {score:.4f} {'>=' if ok else '<'} {setting} {floor:.4f}")

    if settings.max_perplexity is not None:
        ok = candidate.perplexity is not None and candidate.perplexity <= settings.max_perplexity
        gate(ok, "perplexity", f"perplexity {_number(candidate.perplexity)} {'<=' if ok else '>'} validate.max_perplexity {settings.max_perplexity:.3f}")

    if settings.require_beat_base and base is not None:
        for metric in settings.beat_base_metrics:
            ours, theirs = candidate.value(metric), base.value(metric)
            name = "validation loss" if metric == "loss" else metric
            if ours is None or theirs is None:
                gate(False, metric, f"{_unmeasured(metric)} (validate.beat_base_metrics needs it)")
                continue
            lower = not HIGHER_IS_BETTER[metric]
            # NaN compares false either way: a diverged candidate never beats the base.
            ok = ours < theirs if lower else ours > theirs
            sign = ("<" if ok else ">=") if lower else (">" if ok else "<=")
            gate(ok, metric, f"{name} {ours:.4f} {sign} base model's {theirs:.4f} (validate.beat_base_metrics)")

    if production is not None:
        label = f"production {production_version}" if production_version else "production"
        for metric in minimums:
            ours, theirs = candidate.value(metric), production.value(metric)
            if ours is None or theirs is None or math.isnan(theirs):
                continue
            floor = theirs - settings.regression_tolerance
            ok = ours >= floor
            gate(
                ok, metric,
                f"{metric} {ours:.4f} {'>=' if ok else '<'} {label}'s {theirs:.4f} - validate.regression_tolerance "
                f"{settings.regression_tolerance:.4f}" + ("" if ok else f" (a drop of {theirs - ours:.4f})"),
            )

    if reference is not None:
        label = f"reference {reference.version} (validate.reference_version)" if reference.pinned else f"best promoted {reference.version}"
        tolerance = settings.max_drop_from_best
        for metric in minimums:
            ours, theirs = reference.candidate.value(metric), reference.reference.value(metric)
            if ours is None or theirs is None or math.isnan(theirs):
                continue
            ok = ours >= theirs - tolerance
            gate(
                ok, metric,
                f"{metric} {ours:.4f} {'>=' if ok else '<'} {label}'s {theirs:.4f} - validate.max_drop_from_best {tolerance:.4f} "
                f"on the {reference.shared} questions both were scored on" + ("" if ok else f" (a drop of {theirs - ours:.4f})"),
            )

    if settings.min_win_rate is not None:
        if win_rate is not None:
            ok = win_rate.rate >= settings.min_win_rate
            gate(
                ok, "win_rate",
                f"win rate against {'production ' + production_version if production_version else 'production'} {win_rate.rate:.4f} "
                f"(95% interval {win_rate.low:.4f}-{win_rate.high:.4f}, {win_rate.wins} wins, {win_rate.ties} ties, {win_rate.losses} losses) "
                f"{'>=' if ok else '<'} validate.min_win_rate {settings.min_win_rate:.4f}",
            )
        elif production is None:
            passes.append("PASS validate.min_win_rate: no production version to compare with yet")
        else:
            gate(False, "win_rate", "win rate against production was not measured (no free-form questions both answered); validate.min_win_rate needs it")

    if benchmarks is not None:
        for ok, metric, text in benchmark_gates(benchmarks, settings.max_benchmark_drop):
            gate(ok, metric, text)

    return Decision(
        passed=not failures,
        reasons=failures + passes,
        primary_metric=settings.primary_metric,
        candidate=candidate.value(settings.primary_metric),
        production_version=production_version,
        failed_metrics=failed_metrics,
        best_version=reference.version if reference else None,
    )
