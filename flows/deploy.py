from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import State
from prefect.transactions import transaction

from pydantic import Field

from fragua.jobs.registry import DeployOutcome, RollbackOutcome
from fragua.jobs.validate import ValidationOutcome
from fragua.registry import version_file
from fragua.registry.versions import PRODUCTION, AliasState
from fragua.reports.canary import started_verdict
from fragua.reports.outcome import PROMOTED, CandidateOutcome, Verdict, candidate_verdict, promote_hint
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.registry import (
    allocate_task, canary_task, check_server_task, confirm_task, end_canary_task, production_task, promote_task, publish_task, retention_task,
    rollback_task, start_canary_task, verify_task,
)
from fragua.tasks.validate import load_run_task, load_validation_task

from . import current_actor, notify_failure
from .outcome import end, label_run, model_tags, named_after, notify


@flow(name="deploy", flow_run_name=named_after("deploy", "version", "run_id", otherwise="deploy-newest-run"), on_failure=[notify_failure])
def deploy_flow(
    settings: SettingsParameter | None = None, run_id: str | None = None, version: str | None = None,
    canary_percent: Annotated[float, Field(gt=0, lt=100)] | None = None,
) -> DeployOutcome:
    """Publish a validated run as a new version and, with registry.auto_deploy, point production at it.

    upload -> verify (download, checksums, load, smoke-generate) -> move the alias ->
    confirm; the move and the confirmation run in one transaction, so if the confirmation
    fails the alias goes back to where it was. With ``version``, promote an already
    published version instead (e.g. after a development run that only registered it).
    With ``canary_percent``, the version becomes the canary, serving that share of
    production's requests, instead of production (whatever registry.auto_deploy says);
    `fragua promote` or the `canary` flow moves production to it later.
    The run ends Completed, named Promoted, Canary, Not promoted or Rejected.
    """
    settings = settings or Settings.load()
    logger = get_run_logger()
    actor = current_actor()
    if version is not None and canary_percent is not None:
        state = start_canary_task(settings, version, canary_percent, "manual canary", actor)
        current = production_task(settings)
        return _canary_started(settings, state, canary_percent, DeployOutcome(
            version=version, published=False, promoted=False, production=current.version if current else None,
            reasons=["manual canary"], canary=version, canary_percent=canary_percent,
        ))
    if version is not None:
        current = production_task(settings)
        with transaction():
            state = promote_task(settings, version, current.version if current else None, "manual deploy", actor)
            confirm_task(settings, version)
        notify(settings, "deploy", f"Fragua: {version} deployed", f"production: {state.previous} -> {state.version} (manual deploy)")
        label_run(tags=model_tags(settings, version))
        promoted = DeployOutcome(version=version, published=False, promoted=True, production=state.version, reasons=["manual deploy"])
        return end(Verdict(PROMOTED, f"{version} promoted to production (was {state.previous or 'unset'}) by a manual deploy"), promoted)
    if run_id is None:
        run_id = load_run_task(settings, None).run_id
    validation = load_validation_task(settings, run_id)
    if not validation.decision.passed:
        for reason in validation.decision.reasons:
            logger.warning(reason)
        current = production_task(settings)
        return _end(settings, validation, DeployOutcome(
            version=None, published=False, promoted=False,
            production=current.version if current else None,
            reasons=validation.decision.reasons, report_path=validation.report_path,
        ))
    # Allocated once: a retried upload goes into the same version instead of taking a new number.
    version = allocate_task(settings, run_id)
    manifest = publish_task(settings, run_id, flow_run.id, version)
    verify_task(settings, manifest.version)
    report_path = version_file(settings, manifest.version, "report.md")
    if canary_percent is not None:
        state = start_canary_task(settings, manifest.version, canary_percent, f"deploy of run {run_id}", actor)
        if settings.registry.keep_last is not None:
            retention_task(settings)
        current = production_task(settings)
        return _canary_started(settings, state, canary_percent, DeployOutcome(
            version=manifest.version, published=True, promoted=False, production=current.version if current else None,
            reasons=validation.decision.reasons, report_path=report_path, canary=manifest.version, canary_percent=canary_percent,
        ))
    if not settings.registry.auto_deploy:
        logger.info("registry.auto_deploy is off: %s is registered; %s", manifest.version, promote_hint(manifest.version))
        if settings.registry.keep_last is not None:
            retention_task(settings)
        current = production_task(settings)
        return _end(settings, validation, DeployOutcome(
            version=manifest.version, published=True, promoted=False,
            production=current.version if current else None,
            reasons=validation.decision.reasons, report_path=report_path,
        ))
    with transaction():
        state = promote_task(settings, manifest.version, validation.production_version, f"deploy of run {run_id}", actor)
        confirm_task(settings, manifest.version)
    notify(settings, "deploy", f"Fragua: {manifest.version} deployed",
            f"production: {state.previous} -> {state.version} (run {run_id})\n" + "\n".join(validation.decision.reasons))
    if settings.registry.keep_last is not None:
        retention_task(settings)
    create_markdown_artifact(
        f"# Deployed `{manifest.version}`\n\nproduction: `{state.previous}` → `{state.version}`\n\n"
        + "\n".join(f"- {r}" for r in validation.decision.reasons),
        key="deployment",
        description=f"Deployment of {manifest.version}",
    )
    return _end(settings, validation, DeployOutcome(
        version=manifest.version, published=True, promoted=True, production=state.version,
        reasons=validation.decision.reasons, report_path=report_path,
    ))


def _canary_started(settings: Settings, state: AliasState, percent: float, deployed: DeployOutcome) -> State[DeployOutcome]:
    verdict = started_verdict(state.version, percent, deployed.production)
    notify(settings, "canary", f"Fragua: {state.version} is the canary ({percent:g}%)", f"{verdict.line}\ncanary: {state.previous or 'none'} -> {state.version}")
    create_markdown_artifact(
        f"# Canary `{state.version}`\n\n{verdict.line}.\n\n`fragua promote` moves production to it, `fragua rollback` ends it; "
        "the `canary` flow decides by itself from what each version served (registry.canary).\n",
        key="deployment", description=f"Canary of {state.version}",
    )
    label_run(tags=model_tags(settings, state.version))
    return end(verdict, deployed)


def _end(settings: Settings, validation: ValidationOutcome, deployed: DeployOutcome) -> State[DeployOutcome]:
    candidate = CandidateOutcome(
        dataset_id=validation.dataset_id, run_id=validation.run_id, passed=validation.decision.passed, version=deployed.version,
        promoted=deployed.promoted, production_before=validation.production_version, production=deployed.production,
        report_path=deployed.report_path, reasons=deployed.reasons,
    )
    if deployed.version:
        label_run(tags=model_tags(settings, deployed.version))
    return end(candidate_verdict(candidate), deployed)


@flow(name="rollback", flow_run_name=named_after("rollback-to", "to", otherwise="rollback"), on_failure=[notify_failure])
def rollback_flow(settings: SettingsParameter | None = None, to: str | None = None) -> RollbackOutcome:
    """Point production back to the previous version (or ``to``); no weights are copied. With
    serve.server_url, the server is then told to reload and must answer with that version.

    While a canary runs, a rollback without ``to`` only ends the canary (production already
    serves the version it was on); with ``to`` it moves production and ends the canary too."""
    settings = settings or Settings.load()
    actor = current_actor()
    canary = canary_task(settings)
    if canary is not None and to is None:
        end_canary_task(settings, f"rollback during the canary: {canary.version} dropped", actor, canary.version)
        production = production_task(settings)
        line = f"canary {canary.version} ended; production stays {production.version if production else 'unset'}"
        notify(settings, "rollback", f"Fragua: canary {canary.version} rolled back", line)
        create_markdown_artifact(f"# Rollback\n\n{line}", key="rollback", description="Rollback")
        return RollbackOutcome(production=production, moved=False, canary_ended=canary.version)
    state = rollback_task(settings, to, actor)
    check_server_task(settings, PRODUCTION, state.version)
    ended = end_canary_task(settings, f"rollback of production to {state.version}", actor) if canary is not None else None
    also = f"; canary {ended.version} ended" if ended else ""
    notify(settings, "rollback", f"Fragua: production rolled back to {state.version}", f"production: {state.previous} -> {state.version}{also}")
    create_markdown_artifact(
        f"# Rollback\n\nproduction: `{state.previous}` → `{state.version}`{also}", key="rollback", description="Rollback"
    )
    return RollbackOutcome(production=state, moved=True, canary_ended=ended.version if ended else None)
