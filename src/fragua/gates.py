"""Promotion gates: a pure decision over metrics measured on one validation set."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .evaluation import MetricSet
from .settings import ValidateSettings


class Decision(BaseModel):
    passed: bool
    reasons: list[str] = Field(description="One line per gate, passed or failed, human readable.")
    primary_metric: str
    candidate: float
    production_version: str | None = Field(None, description="The production version the candidate was compared with.")


def decide(
    candidate: MetricSet,
    settings: ValidateSettings,
    *,
    base: MetricSet | None = None,
    production: MetricSet | None = None,
    production_version: str | None = None,
) -> Decision:
    """Every gate is checked and reported, so a failure lists all its causes at once."""
    metric = settings.primary_metric
    score = candidate.value(metric)
    failures: list[str] = []
    passes: list[str] = []

    def gate(ok: bool, text: str) -> None:
        (passes if ok else failures).append(("PASS " if ok else "FAIL ") + text)

    gate(score >= settings.min_score, f"{metric} {score:.4f} {'>=' if score >= settings.min_score else '<'} validate.min_score {settings.min_score:.4f}")
    if settings.max_perplexity is not None:
        ok = candidate.perplexity <= settings.max_perplexity
        gate(ok, f"perplexity {candidate.perplexity:.3f} {'<=' if ok else '>'} validate.max_perplexity {settings.max_perplexity:.3f}")
    if settings.require_beat_base and base is not None:
        ok = candidate.loss < base.loss
        gate(ok, f"validation loss {candidate.loss:.4f} {'<' if ok else '>='} base model's {base.loss:.4f}")
    if production is not None:
        floor = production.value(metric) - settings.regression_tolerance
        ok = score >= floor
        gate(
            ok,
            f"{metric} {score:.4f} {'>=' if ok else '<'} production {production_version or ''} "
            f"{production.value(metric):.4f} - validate.regression_tolerance {settings.regression_tolerance:.4f}",
        )
    return Decision(
        passed=not failures,
        reasons=failures + passes,
        primary_metric=metric,
        candidate=score,
        production_version=production_version,
    )
