from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fragua.reports.training import training_summary
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.data import ingest_task
from fragua.tasks.train import base_model_task, train_task
from fragua.train.report import TrainReport

from . import notify_failure
from .outcome import named_after


@flow(name="train", flow_run_name=named_after("train", "dataset_id"), on_failure=[notify_failure])
def train_flow(settings: SettingsParameter | None = None, dataset_id: str | None = None) -> TrainReport:
    """Fine-tune the base model on a dataset version (the sources are ingested when none is given)."""
    settings = settings or Settings.load()
    if dataset_id is None:
        dataset_id = ingest_task(settings).id
    base_model_task(settings)
    report = train_task(settings, dataset_id)
    create_markdown_artifact(training_summary(report), key="training", description=f"Training run {report.run_id}")
    return report
