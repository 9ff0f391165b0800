from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State

from fragua.intake.autotrain import AutotrainResult, Resolution
from fragua.intake.queue import Batch, new_run_id
from fragua.reports.outcome import NOTHING_TO_TRAIN, CandidateOutcome, Verdict, candidate_summary, candidate_verdict, nothing_to_train_summary
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.intake import (
    batch_settings_task, claim_task, mark_trained_task, pending_count_task, record_skip_task, release_stale_task, release_task,
    resolve_duplicates_task,
)

from . import notify_failure
from .outcome import finish, label_run, model_tags
from .pipeline import pipeline_flow


def _run_name() -> str:
    return "autotrain-forced" if flow_run.parameters.get("force") else "autotrain"


@flow(name="autotrain", flow_run_name=_run_name, on_failure=[notify_failure])
def autotrain_flow(settings: SettingsParameter | None = None, force: bool = False) -> AutotrainResult:
    """Once intake.min_new_examples examples are pending (any number with force), run the pipeline
    incrementally on them plus a replay sample; a deployed version marks them trained.

    The run, renamed after its intake run id, ends Completed, named Nothing to train, Promoted,
    Not promoted or Rejected, with an `autotrain` summary artifact."""
    settings = settings or Settings.load()
    released = release_stale_task(settings)
    pending = pending_count_task(settings)
    needed = 1 if force else settings.intake.min_new_examples
    run_id = new_run_id()
    label_run(name=run_id, tags=model_tags(settings))
    if pending < needed:
        record_skip_task(settings, run_id, pending, needed, flow_run.id)
        skipped = AutotrainResult(run_id=run_id, state="skipped", pending=pending, needed=needed, released_stale=released)
        return _nothing_to_train(skipped, f"{pending} examples pending, {needed} needed")
    claimed = claim_task(settings, run_id, flow_run.id)
    try:
        # Examples production's dataset already holds would never count as new: resolved now, never claimed again.
        resolution = resolve_duplicates_task(settings, claimed)
        batch, duplicates = resolution.batch, resolution.duplicates
        if batch.size < needed:
            reason = _too_few_reason(claimed, resolution, needed)
            release_task(settings, run_id, reason, state="skipped")
            return _nothing_to_train(AutotrainResult(
                run_id=run_id, state="nothing-new" if duplicates and not batch.size else "skipped", pending=pending, needed=needed, duplicates=duplicates, released_stale=released, production=resolution.version, reasons=[reason],
            ), reason)
        result = pipeline_flow(batch_settings_task(settings, batch))
    except BaseException as exc:
        release_task(settings, run_id, f"run failed: {type(exc).__name__}: {exc}")
        raise
    outcome = AutotrainResult(
        run_id=run_id, state="trained" if result.promoted else "not-deployed", pending=pending, needed=needed, examples=batch.size,
        duplicates=duplicates, released_stale=released, version=result.version, production=result.production, reasons=result.reasons,
    )
    if result.promoted and result.version:
        mark_trained_task(settings, run_id, result.version)
    else:
        release_task(settings, run_id, "no version was deployed: " + "; ".join(result.reasons), state="not-deployed")
    label_run(tags=model_tags(settings, result.version))
    candidate = CandidateOutcome(**result.model_dump())
    lead = [
        ("intake run", f"`{run_id}`"),
        ("examples", f"{batch.size} trained on ({duplicates} more were duplicates, not trained again): "
         + ("marked trained" if result.promoted else "pending again")),
    ]
    return finish(candidate_verdict(candidate), outcome, candidate_summary("Autotrain", candidate, lead), key="autotrain", description=f"Autotrain run {run_id}")


def _nothing_to_train(result: AutotrainResult, why: str) -> State[AutotrainResult]:
    verdict = Verdict(NOTHING_TO_TRAIN, why)
    return finish(verdict, result, nothing_to_train_summary(result.run_id, why), key="autotrain", description=f"Autotrain run {result.run_id}")


def _too_few_reason(claimed: Batch, resolution: Resolution, needed: int) -> str:
    left = resolution.batch.size
    if not resolution.duplicates:  # a concurrent run claimed them first
        return f"only {left} examples left to claim, {needed} needed"
    if left:
        return f"{resolution.explain(claimed.size)}; {left} new, {needed} needed"
    return f"nothing new to train: {resolution.explain(claimed.size)}"


def forced_autotrain(settings: Settings) -> AutotrainResult:
    """Train on whatever is pending now, however few: what the intake API's forced training runs."""
    return autotrain_flow(settings, force=True)
