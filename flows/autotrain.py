from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from fragua.intake.autotrain import AutotrainResult
from fragua.intake.queue import new_run_id
from fragua.settings import Settings
from fragua.tasks.intake import batch_settings_task, claim_task, mark_trained_task, pending_count_task, record_skip_task, release_stale_task, release_task

from . import notify_failure
from .pipeline import pipeline_flow


@flow(name="autotrain", on_failure=[notify_failure])
def autotrain_flow(settings: Settings | None = None, force: bool = False) -> AutotrainResult:
    """Once intake.min_new_examples examples are pending (any number with force), run the pipeline
    incrementally on them plus a replay sample; a deployed version marks them trained."""
    settings = settings or Settings.load()
    logger = get_run_logger()
    released = release_stale_task(settings)
    pending = pending_count_task(settings)
    needed = 1 if force else settings.intake.min_new_examples
    run_id = new_run_id()
    if pending < needed:
        logger.info("%d examples pending, %d needed: nothing to train", pending, needed)
        record_skip_task(settings, run_id, pending, needed, flow_run.id)
        return AutotrainResult(run_id=run_id, state="skipped", pending=pending, needed=needed, released_stale=released)
    batch = claim_task(settings, run_id, flow_run.id)
    if batch.size < needed:  # a concurrent run claimed them first
        release_task(settings, run_id, f"only {batch.size} examples left to claim, {needed} needed", state="skipped")
        return AutotrainResult(run_id=run_id, state="skipped", pending=batch.size, needed=needed, released_stale=released)
    try:
        result = pipeline_flow(batch_settings_task(settings, batch))
    except BaseException as exc:
        release_task(settings, run_id, f"run failed: {type(exc).__name__}: {exc}")
        raise
    outcome = AutotrainResult(
        run_id=run_id, state="trained" if result.promoted else "not-deployed", pending=pending, needed=needed, examples=batch.size,
        released_stale=released, version=result.version, production=result.production, reasons=result.reasons,
    )
    if result.promoted and result.version:
        mark_trained_task(settings, run_id, result.version)
    else:
        release_task(settings, run_id, "no version was deployed: " + "; ".join(result.reasons), state="not-deployed")
    create_markdown_artifact(
        f"# Autotrain {run_id}\n\n{batch.size} examples, version `{result.version or '-'}`, production `{result.production or '-'}`, "
        f"{'deployed: examples trained' if result.promoted else 'not deployed: examples pending again'}\n\n"
        + "\n".join(f"- {r}" for r in result.reasons),
        key="autotrain", description=f"Autotrain run {run_id}",
    )
    return outcome


def forced_autotrain(settings: Settings) -> AutotrainResult:
    """Train on whatever is pending now, however few: what the intake API's forced training runs."""
    return autotrain_flow(settings, force=True)
