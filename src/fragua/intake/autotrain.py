"""What an autotrain run trains on, and what it tells the queue afterwards.

A run claims the pending examples, writes them (with the examples earlier versions were
trained on, so replay can draw on them) to a JSONL file in the chat format, and runs the
pipeline incrementally on the configured sources plus that file. Only a deployed version
marks its examples ``trained``; anything else puts them back to ``pending``.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from fragua.intake.queue import Batch, IntakeQueue, write_jsonl
from fragua.settings import Settings, SourceSpec


class AutotrainResult(BaseModel):
    run_id: str
    state: Literal["skipped", "trained", "not-deployed"]
    pending: int = Field(description="Examples pending when the run looked.")
    needed: int = Field(description="Pending examples the run needed to train (intake.min_new_examples, or 1 when forced).")
    examples: int = Field(0, description="Examples this run claimed and trained on.")
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
