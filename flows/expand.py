from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from fragua.data.store import DatasetManifest
from fragua.reports.expansion import domain_rows, expansion_summary
from fragua.reports.markdown import display_rows
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.data import expand_task, ingest_task

from . import notify_failure
from .outcome import named_after


@flow(name="expand", flow_run_name=named_after("expand", "dataset_id"), on_failure=[notify_failure])
def expand_flow(settings: SettingsParameter | None = None, dataset_id: str | None = None) -> DatasetManifest:
    """Augment the train split of a dataset version toward expand.expansion_factor."""
    settings = settings or Settings.load()
    if dataset_id is None:
        dataset_id = ingest_task(settings).id
    manifest = expand_task(settings, dataset_id)
    create_markdown_artifact(expansion_summary(manifest), key="dataset-expanded", description=f"Expanded dataset {manifest.id}")
    if report := manifest.report.get("expansion"):
        create_table_artifact(display_rows(domain_rows(report)), key="dataset-expansion", description=f"Train rows per domain before/after, added per strategy, {manifest.id}")
    return manifest
