"""Validation jobs: score a model on a dataset's validation split, apply the gates, write the reports."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from fragua.data.store import open_dataset_store
from fragua.integrations.tracking import tracking_run
from fragua.jobs.data import dataset_split
from fragua.models.loading import load_for_inference
from fragua.reports.validation import validation_report
from fragua.settings import Settings
from fragua.train.runs import RunFolder
from fragua.validate.gates import Decision, decide
from fragua.validate.plots import loss_curve, metric_bars
from fragua.validate.scoring import Evaluation, evaluate


class ValidationOutcome(BaseModel):
    run_id: str
    dataset_id: str
    candidate: Evaluation
    base: Evaluation | None
    production: Evaluation | None
    production_version: str | None
    decision: Decision
    report_path: str
    eval_path: str
    plots: dict[str, str] = Field(default_factory=dict, description="Plot name -> PNG in the run's validation folder.")


def load_run(settings: Settings, run_id: str | None) -> RunFolder:
    """A trained run's folder; None means the newest trained run."""
    return RunFolder.find(settings.runs_path, run_id)


def evaluate_model(settings: Settings, dataset_id: str, model_path: str, *, name: str) -> Evaluation:
    dataset = open_dataset_store(settings).find(dataset_id)
    records = dataset_split(settings, dataset, "validation")
    loaded = load_for_inference(model_path, settings.train)
    return evaluate(loaded.model, loaded.tokenizer, records, settings.validate, max_length=settings.train.max_seq_length, name=name)


def record_validation(
    settings: Settings,
    run_id: str,
    dataset_id: str,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
) -> ValidationOutcome:
    """Apply the gates; write eval.json, report.md and the plots into the run's validation
    folder; log metrics, decision and plots to tracking."""
    decision = decide(
        candidate.overall,
        settings.validate,
        base=base.overall if base else None,
        production=production.overall if production else None,
        production_version=production_version,
    )
    run = RunFolder.of(settings.runs_path, run_id)
    run.validation_dir.mkdir(parents=True, exist_ok=True)
    plots = validation_plots(run, candidate, base, production, production_version)
    report = validation_report(
        run_id=run_id,
        dataset_id=dataset_id,
        candidate=candidate,
        base=base,
        production=production,
        production_version=production_version,
        decision=decision,
        plots={name: path.name for name, path in plots.items()},
    )
    outcome = ValidationOutcome(
        run_id=run_id,
        dataset_id=dataset_id,
        candidate=candidate,
        base=base,
        production=production,
        production_version=production_version,
        decision=decision,
        report_path=str(run.validation_report_file),
        eval_path=str(run.validation_file),
        plots={name: str(path) for name, path in plots.items()},
    )
    run.validation_report_file.write_text(report, encoding="utf-8")
    run.validation_file.write_text(outcome.model_dump_json(indent=2), encoding="utf-8")
    with tracking_run(settings.tracking, settings.work_path, name=f"{run_id}-validate", job_type="validate", config=settings.redacted()) as tracker:
        metrics = {f"candidate/{k}": v for k, v in candidate.overall.model_dump(exclude_none=True).items()}
        for domain, values in candidate.per_domain.items():
            metrics.update({f"candidate/{domain}/{k}": v for k, v in values.model_dump(exclude_none=True).items()})
        if base:
            metrics.update({f"base/{k}": v for k, v in base.overall.model_dump(exclude_none=True).items()})
        if production:
            metrics.update({f"production/{k}": v for k, v in production.overall.model_dump(exclude_none=True).items()})
        tracker.log(metrics)
        for name, path in plots.items():
            tracker.log_image(f"validation/{name}", path)
        tracker.summarize({"passed": decision.passed, "reasons": decision.reasons, "failed_metrics": decision.failed_metrics})
    return outcome


def validation_plots(
    run: RunFolder, candidate: Evaluation, base: Evaluation | None, production: Evaluation | None, production_version: str | None
) -> dict[str, Path]:
    """The loss curve of the run's training and the per-domain metric bars, as PNG files."""
    plots: dict[str, Path] = {}
    if run.report_file.is_file():
        if curve := loss_curve(run.report().log_history, run.validation_dir / "loss_curve.png", title=f"Run {run.run_id}"):
            plots["loss_curve"] = curve
    production_label = f"production {production_version}" if production_version else "production"
    evaluations = {"candidate": candidate, production_label: production, "base": base}
    if bars := metric_bars(evaluations, run.validation_dir / "metrics_by_domain.png", title=f"Validation of run {run.run_id}"):
        plots["metrics_by_domain"] = bars
    return plots


def load_validation(settings: Settings, run_id: str) -> ValidationOutcome:
    path = RunFolder.of(settings.runs_path, run_id).validation_file
    if not path.is_file():
        raise FileNotFoundError(f"run {run_id} has not been validated yet ({path} missing); run `fragua validate --run {run_id}`")
    return ValidationOutcome.model_validate_json(path.read_text())
