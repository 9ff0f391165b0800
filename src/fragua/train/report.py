"""What a training run did: ``train_report.json``, written when it finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, Field

PHASES_DESCRIPTION = (
    "Seconds per phase of the run, in order: 'load data' (reading the dataset version's splits), 'tracking' (W&B set-up and finish), "
    "'setup' (tokenizer, tokenisation, model, packing check, Trainer), 'training' (the optimiser loop), 'evaluation' "
    "(every validation pass, in the loop and after), 'save' (the adapter or model and tokenizer)."
)


class PhaseClock:
    """Wall-clock seconds per named phase of a run, kept in the order the phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - began)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)

    def move(self, source: str, target: str, seconds: float) -> None:
        """Count ``seconds`` of ``source`` as ``target`` (time one phase spent doing another's work)."""
        moved = min(seconds, self.seconds.get(source, 0.0))
        self.add(source, -moved)
        self.add(target, moved)


class TrainReport(BaseModel):
    run_id: str
    run_dir: str
    adapter_dir: str
    base_model: str
    base_parameters: int = Field(description="Parameters of the base model (for the version's size label).")
    method: str
    global_step: int
    max_steps: int = Field(0, description="Optimiser steps the run was configured for (more than global_step when it stopped early).")
    epochs: float
    train_loss: float | None
    eval_loss: float | None
    examples: int
    truncated: int = Field(description="Examples cut at max_seq_length (kept).")
    dropped: int = Field(description="Examples with no answer token left after truncation (not trainable).")
    trained_tokens: int
    resumed_from: str | None
    seconds: float
    phase_seconds: dict[str, float] = Field(default_factory=dict, description=PHASES_DESCRIPTION)
    log_history: list[dict[str, Any]]
    batching: str = Field("", description="How batches were formed and why (padding-free or the fallback).")
    tokens_per_second: float | None = Field(None, description="Training throughput in non-padding tokens per second of this session's loop, its validation passes left out.")
    added_tokens: list[str] = Field(default_factory=list, description="Tokens added to the tokenizer (e.g. ChatML markers) whose embedding rows were trained.")
    stopped_early: bool = Field(False, description="Early stopping ended the run before max_steps.")
    stopped_by_time_budget: bool = Field(False, description="The time budget (hyperparameter search) ended the run before max_steps.")
    best_checkpoint: str | None = Field(None, description="Checkpoint with the lowest validation loss, loaded at the end (early stopping).")
    num_processes: int = 1
    parent_version: str | None = Field(None, description="Registry version whose weights this run started from (incremental training).")
    incremental: dict[str, Any] | None = Field(None, description="Incremental training: new and replayed example counts.")
    tracking_run: str | None = None
    streamed_from: str | None = Field(None, description="Where the train split was streamed from (train.stream_data), read as training went; None: read whole.")
    finished_at: str
