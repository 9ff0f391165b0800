from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import State
from prefect.transactions import transaction

from fragua.jobs.registry import DeployOutcome
from fragua.jobs.validate import ValidationOutcome
from fragua.registry import version_file
from fragua.registry.versions import AliasState
from fragua.reports.outcome import PROMOTED, CandidateOutcome, Verdict, candidate_verdict, promote_hint
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.notify import notify_task
from fragua.tasks.registry import allocate_task, confirm_task, production_task, promote_task, publish_task, retention_task, rollback_task, verify_task
from fragua.tasks.validate import load_run_task, load_validation_task

from . import current_actor, notify_failure
from .outcome import end, label_run, model_tags, named_after


@flow(name="deploy", flow_run_name=named_after("deploy", "version", "run_id", otherwise="deploy-newest-run"), on_failure=[notify_failure])
def deploy_flow(settings: SettingsParameter | None = None, run_id: str | None = None, version: str | None = None) -> DeployOutcome:
    """Publish a validated run as a new version and, with registry.auto_deploy, point production at it.

    upload -> verify (download, checksums, load, smoke-generate) -> move the alias ->
    confirm; the move and the confirmation run in one transaction, so if the confirmation
    fails the alias goes back to where it was. With ``version``, promote an already
    published version instead (e.g. after a development run that only registered it).
    The run ends Completed, named Promoted, Not promoted or Rejected.
    """
    settings = settings or Settings.load()
    logger = get_run_logger()
    actor = current_actor()
    if version is not None:
        current = production_task(settings)
        with transaction():
            state = promote_task(settings, version, current.version if current else None, "manual deploy", actor)
            confirm_task(settings, version)
        _notify(settings, "deploy", f"Fragua: {version} deployed", f"production: {state.previous} -> {state.version} (manual deploy)")
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
    _notify(settings, "deploy", f"Fragua: {manifest.version} deployed",
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
def rollback_flow(settings: SettingsParameter | None = None, to: str | None = None) -> AliasState:
    """Point production back to the previous version (or ``to``); no weights are copied."""
    settings = settings or Settings.load()
    state = rollback_task(settings, to, current_actor())
    _notify(settings, "rollback", f"Fragua: production rolled back to {state.version}", f"production: {state.previous} -> {state.version}")
    create_markdown_artifact(
        f"# Rollback\n\nproduction: `{state.previous}` → `{state.version}`", key="rollback", description="Rollback"
    )
    return state


def _notify(settings: Settings, event: str, subject: str, body: str) -> None:
    """A notification that cannot be sent is logged; it never undoes the deploy or rollback."""
    state = notify_task(settings.notifications, event, subject, body, return_state=True)
    if state.is_failed():
        get_run_logger().warning("could not send the %s notification: %s", event, state.message)
