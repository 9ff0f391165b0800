from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow
from pydantic import BaseModel, Field

from fragua.registry.canary_decision import CanaryDecision, VersionStats, canary_decision
from fragua.registry.versions import AliasState
from fragua.reports.canary import NO_CANARY, canary_summary, decision_verdict
from fragua.reports.outcome import PROMOTED, Verdict
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.intake import serving_stats_task
from fragua.tasks.registry import canary_task, end_canary_task, production_task, promote_canary_task

from . import current_actor, notify_failure
from .outcome import end, finish, label_run, model_tags, notify


class CanaryOutcome(BaseModel):
    canary: str | None = Field(description="The canary judged; None when none was running.")
    production: str | None = Field(description="Production after the run.")
    action: str = Field(description="promote, drop, wait, or none (no canary).")
    reasons: list[str] = Field(default_factory=list)
    canary_stats: VersionStats | None = None
    production_stats: VersionStats | None = None


@flow(name="canary", on_failure=[notify_failure])
def canary_flow(settings: SettingsParameter | None = None) -> CanaryOutcome:
    """Judge the running canary against production over the same time, from the serving log:
    promote it, drop it, or let it run (registry.canary). Without a canary, nothing to do."""
    settings = settings or Settings.load()
    canary = canary_task(settings)
    production = production_task(settings)
    if canary is None or production is None:
        line = "no canary is running; nothing to judge" if canary is None else f"canary {canary.version} has no production to compare with"
        return end(Verdict(NO_CANARY, line), CanaryOutcome(canary=None, production=production.version if production else None, action="none"))
    label_run(tags=model_tags(settings, canary.version))
    since = datetime.fromisoformat(canary.updated_at)
    elapsed = datetime.now(timezone.utc) - since
    served = serving_stats_task(settings, since)
    canary_stats = served.get(canary.version) or VersionStats(version=canary.version)
    production_stats = served.get(production.version) or VersionStats(version=production.version)
    decision = canary_decision(canary_stats, production_stats, settings.registry.canary, elapsed=elapsed)
    after = _apply(settings, decision, canary, production)
    verdict = decision_verdict(decision, canary.version, production.version)
    outcome = CanaryOutcome(
        canary=canary.version, production=after, action=decision.action, reasons=decision.reasons,
        canary_stats=canary_stats, production_stats=production_stats,
    )
    summary = canary_summary(verdict, canary_stats, production_stats, canary.traffic_percent, decision, elapsed)
    return finish(verdict, outcome, summary, key="canary", description=f"Canary {canary.version}: {decision.action}")


def _apply(settings: Settings, decision: CanaryDecision, canary: AliasState, production: AliasState) -> str:
    """Move the aliases as decided (only if the canary is still the one judged) and notify; production after."""
    reasons = "\n".join(f"- {reason}" for reason in decision.reasons)
    if decision.action == "promote":
        state = promote_canary_task(settings, "canary flow", current_actor(), canary.version)
        notify(settings, "canary", f"Fragua: canary {canary.version} promoted", f"production: {production.version} -> {state.version}\n{reasons}")
        return state.version
    if decision.action == "drop":
        end_canary_task(settings, f"canary flow dropped it: {decision.reasons[0]}", current_actor(), canary.version)
        notify(settings, "canary", f"Fragua: canary {canary.version} dropped", f"production stays {production.version}\n{reasons}")
    return production.version


@flow(name="promote", on_failure=[notify_failure])
def promote_flow(settings: SettingsParameter | None = None) -> AliasState:
    """Move production to the running canary's version (previous keeps what production was) and end the canary."""
    settings = settings or Settings.load()
    state = promote_canary_task(settings, "manual promote", current_actor())
    notify(settings, "canary", f"Fragua: canary {state.version} promoted", f"production: {state.previous} -> {state.version} (manual promote)")
    label_run(tags=model_tags(settings, state.version))
    return end(Verdict(PROMOTED, f"canary {state.version} promoted to production (was {state.previous or 'unset'})"), state)

