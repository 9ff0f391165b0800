from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from fragua.jobs.validate import ValidationOutcome
from fragua.reports.markdown import display_rows
from fragua.reports.validation import comparison_rows, validation_report
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.forgetting import benchmarks_task, retention_task
from fragua.tasks.registry import production_task
from fragua.tasks.validate import (
    evaluate_task,
    evaluate_version_task,
    load_run_task,
    record_validation_task,
    reference_task,
    versus_production_task,
)

from . import notify_failure
from .outcome import named_after


@flow(name="validate", flow_run_name=named_after("validate", "run_id", otherwise="validate-newest-run"), on_failure=[notify_failure])
def validate_flow(settings: SettingsParameter | None = None, run_id: str | None = None) -> ValidationOutcome:
    """Score a trained run, the base model, the production version and the best promoted version on one validation set, run the
    forgetting checks (validate.benchmarks, the trained-examples table); apply the gates."""
    settings = settings or Settings.load()
    run = load_run_task(settings, run_id)
    record = run.record()
    dataset_id = record.dataset_id
    candidate = evaluate_task(settings, dataset_id, str(run.model_dir), name="candidate", run_id=run.run_id)
    base = evaluate_task(settings, dataset_id, record.base_model, name="base")
    production_state = production_task(settings)
    production = versus_production = None
    if production_state is not None:
        production = evaluate_version_task(settings, dataset_id, production_state.version)
        versus_production = versus_production_task(settings, dataset_id, run.run_id, production_state.version)
    # After production, whose scores are cached by then: the drift guard scores at most one more version.
    reference = reference_task(settings, dataset_id, run.run_id)
    production_version = production_state.version if production_state else None
    benchmarks = benchmarks_task(settings, run.run_id, production_version)
    retention = retention_task(settings, run.run_id, production_version)
    outcome = record_validation_task(
        settings, run.run_id, dataset_id, candidate, base, production, production_version, reference, versus_production, benchmarks, retention,
    )
    # The UI cannot open the run folder: the artifact carries the plots themselves.
    report = validation_report(
        run_id=outcome.run_id, dataset_id=dataset_id, candidate=candidate, base=base, production=production,
        production_version=outcome.production_version, decision=outcome.decision, reference=reference, plots=outcome.plots, artifact=True,
        versus_production=versus_production, benchmarks=benchmarks, retention=retention,
    )
    create_markdown_artifact(report, key="validation-report", description=f"Validation of run {run.run_id}")
    production_label = f"production {outcome.production_version}" if outcome.production_version else "production"
    create_table_artifact(
        display_rows(comparison_rows({"candidate": candidate, production_label: production, "base": base})),
        key="validation-metrics",
        description="Candidate vs production vs base, overall and per domain",
    )
    return outcome
