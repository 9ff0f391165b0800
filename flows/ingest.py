from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from fragua.dataset_store import DatasetManifest, load_stats
from fragua.expand_report import domain_rows, expansion_summary
from fragua.report import dataset_rows, dataset_summary
from fragua.settings import Settings
from tasks.data import expand_task, ingest_task

from . import notify_failure


@flow(name="ingest", on_failure=[notify_failure])
def ingest_flow(settings: Settings | None = None) -> DatasetManifest:
    """Read data.sources into canonical records, quarantine bad rows, split, store a dataset version."""
    settings = settings or Settings.load()
    manifest = ingest_task(settings)
    stats = load_stats(manifest)
    create_markdown_artifact(dataset_summary(manifest, stats), key="dataset", description=f"Dataset version {manifest.id}")
    create_table_artifact(dataset_rows(manifest, stats), key="dataset-domains", description=f"Records per domain and split, {manifest.id}")
    return manifest


@flow(name="expand", on_failure=[notify_failure])
def expand_flow(settings: Settings | None = None, dataset_id: str | None = None) -> DatasetManifest:
    """Augment the train split of a dataset version toward expand.expansion_factor."""
    settings = settings or Settings.load()
    if dataset_id is None:
        dataset_id = ingest_task(settings).id
    manifest = expand_task(settings, dataset_id)
    create_markdown_artifact(expansion_summary(manifest), key="dataset-expanded", description=f"Expanded dataset {manifest.id}")
    if report := manifest.report.get("expansion"):
        create_table_artifact(domain_rows(report), key="dataset-expansion", description=f"Train rows per domain before/after, added per strategy, {manifest.id}")
    return manifest
