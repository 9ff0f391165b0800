from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from fragua.data.store import DatasetManifest, load_stats
from fragua.reports.dataset import dataset_rows, dataset_summary
from fragua.reports.markdown import display_rows
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.data import ingest_task

from . import notify_failure
from .outcome import named_after


@flow(name="ingest", flow_run_name=named_after("ingest"), on_failure=[notify_failure])
def ingest_flow(settings: SettingsParameter | None = None) -> DatasetManifest:
    """Read data.sources into canonical records, quarantine bad rows, split, store a dataset version."""
    settings = settings or Settings.load()
    manifest = ingest_task(settings)
    stats = load_stats(manifest)
    create_markdown_artifact(dataset_summary(manifest, stats), key="dataset", description=f"Dataset version {manifest.id}")
    create_table_artifact(display_rows(dataset_rows(manifest, stats)), key="dataset-domains", description=f"Records per domain and split, {manifest.id}")
    return manifest
