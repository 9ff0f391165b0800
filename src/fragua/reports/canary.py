"""A canary's state in words: the verdicts of the deploy and canary runs, and the canary run's summary."""

from __future__ import annotations

from datetime import timedelta

from fragua.registry.canary_decision import CanaryDecision, VersionStats
from fragua.reports.outcome import Verdict

CANARY_STARTED = "Canary"
CANARY_PROMOTED = "Promoted"
CANARY_DROPPED = "Dropped"
CANARY_WAITING = "Waiting"
NO_CANARY = "No canary"


def started_verdict(version: str, percent: float, production: str | None) -> Verdict:
    return Verdict(CANARY_STARTED, f"{version} is the canary at {percent:g}% of production's requests; production stays {production or 'unset'}")


def decision_verdict(decision: CanaryDecision, canary: str, production: str) -> Verdict:
    if decision.action == "promote":
        return Verdict(CANARY_PROMOTED, f"canary {canary} promoted to production (was {production})")
    if decision.action == "drop":
        return Verdict(CANARY_DROPPED, f"canary {canary} dropped, production stays {production}: {decision.reasons[0]}")
    return Verdict(CANARY_WAITING, f"canary {canary} keeps running: {decision.reasons[0]}")


def _cell(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def stats_rows(stats: list[VersionStats]) -> list[str]:
    """A markdown table of what each version served."""
    lines = ["| version | requests | error rate | p50 ms | p95 ms | ratings | mean rating |", "|---|---:|---:|---:|---:|---:|---:|"]
    for item in stats:
        lines.append(
            f"| `{item.version}` | {item.requests} | {item.error_rate:.2%} | {_cell(item.latency_p50_ms, '.0f')} | "
            f"{_cell(item.latency_p95_ms, '.0f')} | {item.ratings} | {_cell(item.mean_rating, '+.2f')} |"
        )
    return lines


def canary_summary(verdict: Verdict, canary: VersionStats, production: VersionStats, percent: float | None, decision: CanaryDecision, elapsed: timedelta) -> str:
    """The canary run's artifact: the verdict, both versions side by side since the canary started, and why."""
    share = f" at {percent:g}% of production's requests" if percent else ""
    lines = [
        f"# Canary: {verdict.name}", "", verdict.line, "",
        f"`{canary.version}`{share} against production `{production.version}`, over the {elapsed.total_seconds() / 3600:.1f} h since the canary started.", "",
        *stats_rows([canary, production]), "", "## Why", "", *(f"- {reason}" for reason in decision.reasons), "",
        "Thresholds: `registry.canary` (min_requests, max_error_rate_increase, min_ratings, max_rating_drop, max_duration_hours).",
    ]
    return "\n".join(lines) + "\n"
