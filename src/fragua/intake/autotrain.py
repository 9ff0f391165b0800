"""What an autotrain run trains on, and what it tells the queue afterwards.

A run claims the pending examples, writes them (with the examples earlier versions were
trained on, so replay can draw on them) to a JSONL file in the chat format, and runs the
pipeline incrementally on the configured sources plus that file. Only a deployed version
marks its examples ``trained``; anything else puts them back to ``pending``.

Claimed examples whose content the production version's dataset already holds would never be
"new" to incremental training: they become ``duplicate`` (naming that version and why) before the
pipeline runs, so a queue of nothing but such examples ends in "nothing new to train" once
instead of failing, and being claimed again, every cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from fragua.data.splits import SPLITS
from fragua.data.store import load_table, open_dataset_store
from fragua.intake.queue import Batch, IntakeQueue, content_id, write_jsonl
from fragua.registry import open_registry
from fragua.settings import Settings, SourceSpec


class AutotrainResult(BaseModel):
    run_id: str
    state: Literal["skipped", "nothing-new", "trained", "not-deployed"]
    pending: int = Field(description="Examples pending when the run looked.")
    needed: int = Field(description="Pending examples the run needed to train (intake.min_new_examples, or 1 when forced).")
    examples: int = Field(0, description="Examples this run claimed and trained on.")
    duplicates: int = Field(0, description="Claimed examples the production version's dataset already holds: marked duplicate, not trained again.")
    released_stale: int = Field(0, description="Examples of crashed runs put back to pending first.")
    version: str | None = None
    production: str | None = None
    reasons: list[str] = Field(default_factory=list)


def open_queue(settings: Settings) -> IntakeQueue:
    return IntakeQueue.from_settings(settings)


def batch_file(settings: Settings, run_id: str) -> Path:
    return settings.work_path / "intake" / "runs" / f"{run_id}.jsonl"


def batch_settings(settings: Settings, batch: Batch) -> Settings:
    """The settings of the pipeline run on a claimed batch: the sources plus the queue's
    examples (this batch and every trained one), trained incrementally."""
    queue = open_queue(settings)
    path = batch_file(settings, batch.id)
    write_jsonl(chain(queue.trained_rows(), queue.batch_rows(batch.id)), path)
    intake_source = SourceSpec(path=str(path), format="chat")
    return settings.model_copy(update={
        "data": settings.data.model_copy(update={"sources": [*settings.data.sources, intake_source]}),
        "train": settings.train.model_copy(update={"incremental": True}),
    })


@dataclass(frozen=True)
class ProductionContent:
    """The record ids of the production version's dataset, with the split each is in."""

    version: str
    dataset_id: str
    splits: dict[str, str]


def production_content(settings: Settings) -> ProductionContent | None:
    """What incremental training will count as not new; None without a production version
    or its dataset (incremental training then explains itself)."""
    registry = open_registry(settings)
    production = registry.production()
    if production is None:
        return None
    dataset_id = registry.manifest(production.version).lineage.get("dataset_id")
    if not dataset_id:
        return None
    try:
        dataset = open_dataset_store(settings).find(dataset_id)
    except FileNotFoundError:
        return None
    splits: dict[str, str] = {}
    for split in SPLITS:
        for record_id in load_table(dataset, split).column("id").to_pylist():
            splits.setdefault(record_id, split)
    return ProductionContent(production.version, dataset.id, splits)


@dataclass(frozen=True)
class Resolution:
    """A claimed batch after its duplicates were marked: what is left to train on."""

    batch: Batch
    duplicates: int
    version: str | None = None

    def explain(self, claimed: int) -> str:
        return (f"{self.duplicates} of {claimed} claimed examples are already in the dataset of production version {self.version}: "
                "marked duplicate, not trained again")


def duplicate_reason(content: ProductionContent, split: str) -> str:
    where = f"the {split} split of dataset {content.dataset_id[:12]} of production version {content.version}"
    if split == "train":
        return f"duplicate: its content is already in {where}, which was trained on it"
    return f"duplicate: its content is already in {where} (held out to measure the model, so never trained on)"


def resolve_duplicates(settings: Settings, batch: Batch) -> Resolution:
    """Mark the batch's examples whose content production's dataset holds ``duplicate``; the rest stay claimed."""
    content = production_content(settings) if batch.size else None
    if content is None:
        return Resolution(batch, 0)
    queue = open_queue(settings)
    reasons: dict[int, str] = {}
    for row in queue.batch_rows(batch.id):
        split = content.splits.get(content_id(row))
        if split is not None:
            reasons[row["intake_id"]] = duplicate_reason(content, split)
    if not reasons:
        return Resolution(batch, 0)
    marked = queue.mark_duplicates(batch.id, reasons, content.version)
    left = Batch(batch.id, [example_id for example_id in batch.example_ids if example_id not in reasons])
    return Resolution(left, marked, content.version)
