from __future__ import annotations

from prefect import flow
from prefect.states import State
from pydantic import BaseModel

from fragua.reports.outcome import CandidateOutcome, candidate_summary, candidate_verdict
from fragua.settings import Settings, SettingsParameter

from . import notify_failure
from .deploy import deploy_flow
from .expand import expand_flow
from .ingest import ingest_flow
from .outcome import finish, label_run, model_tags, named_after
from .train import train_flow
from .validate import validate_flow


class PipelineResult(BaseModel):
    dataset_id: str
    run_id: str
    passed: bool
    version: str | None
    promoted: bool
    production: str | None
    production_before: str | None = None
    report_path: str | None
    reasons: list[str]


@flow(name="pipeline", flow_run_name=named_after("pipeline"), on_failure=[notify_failure])
def pipeline_flow(settings: SettingsParameter | None = None) -> PipelineResult:
    """ingest -> expand -> train -> validate -> deploy, each a subflow on the same settings.

    The run ends Completed, named Promoted, Not promoted or Rejected, with a `pipeline` summary artifact."""
    settings = settings or Settings.load()
    label_run(tags=model_tags(settings))
    dataset = ingest_flow(settings)
    if settings.expand.expansion_factor > 1.0:
        dataset = expand_flow(settings, dataset.id)
    trained = train_flow(settings, dataset.id)
    validation = validate_flow(settings, trained.run_id)
    deployed = deploy_flow(settings, trained.run_id)
    result = PipelineResult(
        dataset_id=dataset.id,
        run_id=trained.run_id,
        passed=validation.decision.passed,
        version=deployed.version,
        promoted=deployed.promoted,
        production=deployed.production,
        production_before=validation.production_version,
        report_path=deployed.report_path or validation.report_path,
        reasons=validation.decision.reasons,
    )
    return _finish(settings, result)


def _finish(settings: Settings, result: PipelineResult) -> State[PipelineResult]:
    label_run(tags=model_tags(settings, result.version))
    outcome = CandidateOutcome(**result.model_dump())
    return finish(
        candidate_verdict(outcome), result, candidate_summary("Pipeline", outcome),
        key="pipeline", description=f"Outcome of training run {result.run_id}",
    )
