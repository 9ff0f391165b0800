from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from fragua.settings import Settings, SettingsParameter

from . import notify_failure
from .deploy import deploy_flow
from .expand import expand_flow
from .ingest import ingest_flow
from .train import train_flow
from .validate import validate_flow


class PipelineResult(BaseModel):
    dataset_id: str
    run_id: str
    passed: bool
    version: str | None
    promoted: bool
    production: str | None
    report_path: str | None
    reasons: list[str]


@flow(name="pipeline", on_failure=[notify_failure])
def pipeline_flow(settings: SettingsParameter | None = None) -> PipelineResult:
    """ingest -> expand -> train -> validate -> deploy, each a subflow on the same settings."""
    settings = settings or Settings.load()
    dataset = ingest_flow(settings)
    if settings.expand.expansion_factor > 1.0:
        dataset = expand_flow(settings, dataset.id)
    trained = train_flow(settings, dataset.id)
    validation = validate_flow(settings, trained.run_id)
    deployed = deploy_flow(settings, trained.run_id)
    return PipelineResult(
        dataset_id=dataset.id,
        run_id=trained.run_id,
        passed=validation.decision.passed,
        version=deployed.version,
        promoted=deployed.promoted,
        production=deployed.production,
        report_path=deployed.report_path or validation.report_path,
        reasons=validation.decision.reasons,
    )
