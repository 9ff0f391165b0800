from __future__ import annotations


from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from fragua.jobs.registry import Promotion, allocate_version, clean_registry, promote_version, publish_run, verify_version
from fragua.jobs.serving import check_server, tell_server_to_reload
from fragua.registry import open_registry
from fragua.registry.canary import CANARY, end_canary, promote_canary, start_canary
from fragua.registry.versions import PRODUCTION, AliasState, CleanupReport, VersionManifest
from fragua.settings import Settings

from . import STORAGE_RETRY_DELAYS, transient_only

_STORAGE = dict(retries=3, retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=transient_only, cache_policy=NO_CACHE)
# Tasks inside the deploy transaction get no task-level retries: Prefect rolls the whole
# transaction back on a task's first failed attempt, so a retry would run after the undo.
# Their storage requests are still retried with backoff by botocore (registry.max_attempts).
_IN_TRANSACTION = dict(retries=0, cache_policy=NO_CACHE)


@task(name="production-version", **_STORAGE)
def production_task(settings: Settings) -> AliasState | None:
    state = open_registry(settings).production()
    get_run_logger().info("production: %s", state.version if state else "none yet")
    return state


@task(name="publish-version", **_STORAGE)
def publish_task(settings: Settings, run_id: str, flow_run_id: str | None, version: str | None = None) -> VersionManifest:
    manifest = publish_run(settings, run_id, flow_run_id=flow_run_id, version=version)
    get_run_logger().info("published %s (%d files)", manifest.version, len(manifest.files))
    return manifest


@task(name="verify-version", **_STORAGE)
def verify_task(settings: Settings, version: str) -> str:
    answer = verify_version(settings, version)
    get_run_logger().info("smoke check of %s answered: %r", version, answer)
    return answer


@task(name="allocate-version", **_STORAGE)
def allocate_task(settings: Settings, run_id: str) -> str:
    version = allocate_version(settings, run_id)
    get_run_logger().info("allocated %s", version)
    return version


@task(name="promote-version", **_IN_TRANSACTION)
def promote_task(settings: Settings, version: str, expected_production: str | None, reason: str, actor: str | None) -> AliasState:
    promotion = promote_version(settings, version, expected_production=expected_production, reason=reason, actor=actor)
    transaction = get_transaction()
    if transaction is not None:
        # What the rollback hook needs if a later step of the deploy fails.
        transaction.set("promotion", promotion)
        transaction.set("settings", settings)
        transaction.set("actor", actor)
    state = promotion.production
    get_run_logger().info("production -> %s (previous: %s)", state.version, state.previous)
    return state


@promote_task.on_rollback
def restore_production(transaction: Transaction) -> None:
    """A step after the alias move failed: put production back where it was."""
    promotion: Promotion = transaction.get("promotion")
    restored = open_registry(transaction.get("settings")).revert(
        promotion.production, promotion.previous_before,
        reason=f"deploy of {promotion.production.version} rolled back: a step after the move failed",
        actor=transaction.get("actor"),
    )
    logger = get_run_logger()
    if restored:
        logger.warning("production restored to %s", promotion.production.previous or "unset")
        tell_server_to_reload(transaction.get("settings"))
    else:
        logger.warning("production was moved by someone else after %s; left as it is", promotion.production.version)


@task(name="confirm-production", **_IN_TRANSACTION)
def confirm_task(settings: Settings, version: str) -> None:
    """Production resolves to ``version`` with all its files; with serve.server_url, the server
    loaded it and answers with it (else the deploy's transaction puts production back)."""
    open_registry(settings).confirm(PRODUCTION, version)
    logger = get_run_logger()
    logger.info("production resolves to %s and all its files are in the registry", version)
    answer = check_server(settings, PRODUCTION, version)
    if answer is not None:
        logger.info("the server at %s serves %s as production; it answered: %r", settings.serve.server_url, version, answer)


@task(name="apply-retention", **_STORAGE)
def retention_task(settings: Settings) -> CleanupReport:
    report = clean_registry(settings)
    if report.expired or report.unfinished:
        get_run_logger().info("retention removed %s; kept for aliases: %s", report.expired + report.unfinished, report.kept_for_alias)
    return report


@task(name="rollback", **_STORAGE)
def rollback_task(settings: Settings, to: str | None, actor: str | None) -> AliasState:
    state = open_registry(settings).rollback(to, actor=actor)
    get_run_logger().info("production rolled back %s -> %s", state.previous, state.version)
    return state


@task(name="canary-version", **_STORAGE)
def canary_task(settings: Settings) -> AliasState | None:
    state, _ = open_registry(settings).alias(CANARY)
    get_run_logger().info("canary: %s", f"{state.version} at {state.traffic_percent:g}%" if state and state.traffic_percent else "none")
    return state


@task(name="start-canary", **_STORAGE)
def start_canary_task(settings: Settings, version: str, percent: float, reason: str, actor: str | None) -> AliasState:
    state = start_canary(open_registry(settings), version, percent, reason=reason, actor=actor)
    get_run_logger().info("canary -> %s at %g%% of production's requests (was %s)", state.version, percent, state.previous or "none")
    return state


@task(name="promote-canary", **_STORAGE)
def promote_canary_task(settings: Settings, reason: str, actor: str | None, expected_version: str | None = None) -> AliasState:
    state = promote_canary(open_registry(settings), reason=reason, actor=actor, expected_version=expected_version)
    get_run_logger().info("production -> %s (previous: %s); the canary ended", state.version, state.previous)
    return state


@task(name="end-canary", **_STORAGE)
def end_canary_task(settings: Settings, reason: str, actor: str | None, expected_version: str | None = None) -> AliasState | None:
    ended = end_canary(open_registry(settings), reason=reason, actor=actor, expected_version=expected_version)
    if ended is not None:
        get_run_logger().info("canary %s ended: %s", ended.version, reason)
    return ended


@task(name="check-server", retries=0, cache_policy=NO_CACHE)
def check_server_task(settings: Settings, alias: str, version: str) -> str | None:
    """The server at serve.server_url (when set) serves ``version`` as ``alias`` and answers with it.
    Not retried: the server has loaded and answered within serve.check_timeout_s or it cannot."""
    answer = check_server(settings, alias, version)
    if answer is not None:
        get_run_logger().info("the server at %s serves %s as %s; it answered: %r", settings.serve.server_url, version, alias, answer)
    return answer
