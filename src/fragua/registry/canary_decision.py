"""Whether a canary has earned production: a pure function of what each version served.

The canary and production are compared over the same time (since the canary started): the
canary must have served ``min_requests``, its error rate may exceed production's by at most
``max_error_rate_increase``, and, once both have ``min_ratings`` feedback ratings, its mean
rating may fall below production's by at most ``max_rating_drop``. A canary that has not served
enough requests within ``max_duration_hours`` is dropped: too little traffic to judge it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field

from fragua.settings import CanarySettings


class VersionStats(BaseModel):
    """What one version served over a period: requests, failures, latency, tokens and ratings."""

    version: str
    requests: int = Field(0, ge=0)
    errors: int = Field(0, ge=0, description="Requests that failed (an error answer instead of a completion).")
    latency_p50_ms: float | None = Field(None, description="Median latency of the successful requests; None without any.")
    latency_p95_ms: float | None = Field(None, description="95th percentile (nearest rank) latency of the successful requests.")
    completion_tokens: int = Field(0, ge=0)
    ratings: int = Field(0, ge=0, description="Feedback ratings given to its responses.")
    mean_rating: float | None = Field(None, description="Mean rating from -1 (all bad) to 1 (all good); None without ratings.")

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class CanaryDecision(BaseModel):
    action: Literal["promote", "drop", "wait"]
    reasons: list[str]


def canary_decision(
    canary: VersionStats, production: VersionStats, settings: CanarySettings, *, elapsed: timedelta = timedelta(0)
) -> CanaryDecision:
    """Promote, drop or wait, with the reasons; ``elapsed`` is how long the canary has been running."""
    if canary.requests < settings.min_requests:
        served = f"{canary.version} served {canary.requests} of the {settings.min_requests} requests needed (registry.canary.min_requests)"
        if elapsed >= timedelta(hours=settings.max_duration_hours):
            return CanaryDecision(action="drop", reasons=[f"{served} in {_hours(elapsed)}, past registry.canary.max_duration_hours ({settings.max_duration_hours:g})"])
        return CanaryDecision(action="wait", reasons=[f"{served} in {_hours(elapsed)}"])
    failures, reasons = [], []
    increase = canary.error_rate - production.error_rate
    errors = f"error rate {canary.error_rate:.2%} against production's {production.error_rate:.2%}"
    if increase > settings.max_error_rate_increase:
        failures.append(f"{errors}: {increase:.2%} more than production, above registry.canary.max_error_rate_increase ({settings.max_error_rate_increase:.2%})")
    else:
        reasons.append(f"{errors}, within registry.canary.max_error_rate_increase ({settings.max_error_rate_increase:.2%})")
    fewest = min(canary.ratings, production.ratings)
    if canary.mean_rating is None or production.mean_rating is None or fewest < settings.min_ratings:
        reasons.append(
            f"ratings not compared: canary has {canary.ratings}, production {production.ratings}, "
            f"each needs {settings.min_ratings} (registry.canary.min_ratings)"
        )
    else:
        drop = production.mean_rating - canary.mean_rating
        ratings = f"mean rating {canary.mean_rating:+.2f} against production's {production.mean_rating:+.2f}"
        if drop > settings.max_rating_drop:
            failures.append(f"{ratings}: {drop:.2f} lower, more than registry.canary.max_rating_drop ({settings.max_rating_drop:g})")
        else:
            reasons.append(f"{ratings}, within registry.canary.max_rating_drop ({settings.max_rating_drop:g})")
    if failures:
        return CanaryDecision(action="drop", reasons=failures + reasons)
    return CanaryDecision(action="promote", reasons=[f"{canary.version} served {canary.requests} requests", *reasons])


def _hours(elapsed: timedelta) -> str:
    return f"{elapsed.total_seconds() / 3600:.1f} h"
