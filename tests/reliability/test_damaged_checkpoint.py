"""Training killed after two complete checkpoints, then the newest one's weights cut to half (a
disk fault, a copy cut short): the re-run warns once, sets it aside, resumes from the older sound
one, and ends like a run that was never interrupted."""

from __future__ import annotations

import logging
import os

import pytest

from fragua.jobs.data import ingest_sources
from fragua.jobs.train import train_model, training_run_id
from fragua.models.tiny import ensure_base_model
from fragua.train.checkpoints import complete_checkpoints

from ..conftest import EXAMPLES, make_settings
from .test_training_kills import assert_ends_like_an_uninterrupted_run, train_until_killed

TRAIN = {"max_steps": 12, "save_steps": 4, "logging_steps": 1, "batch_size": 8, "save_total_limit": 3}
WEIGHTS = "adapter_model.safetensors"


def settings_for(work):
    return make_settings(work, data={"sources": [{"path": str(EXAMPLES / "batch1")}]}, train=TRAIN)


@pytest.mark.slow(seconds=60)
def test_a_damaged_newest_checkpoint_is_set_aside_and_training_resumes_from_the_older_one(tmp_path, caplog):
    settings = settings_for(tmp_path / "killed")
    dataset = ingest_sources(settings)
    ensure_base_model(settings)
    checkpoints = settings.runs_path / training_run_id(settings, dataset.id) / "checkpoints"

    train_until_killed(settings, dataset.id, kill_at_step=10)
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["checkpoint-4", "checkpoint-8"]
    weights = checkpoints / "checkpoint-8" / WEIGHTS
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    cut = weights.read_bytes()

    with caplog.at_level(logging.INFO, logger="fragua"):
        resumed = train_model(settings, dataset.id)  # the same run id: a Prefect retry does exactly this
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("fragua")]
    assert len(warnings) == 1, warnings
    assert "checkpoint-8 is damaged" in warnings[0] and f"{WEIGHTS} is {len(cut)} bytes, its marker says" in warnings[0]
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.global_step == resumed.max_steps == 12
    assert [e["step"] for e in resumed.log_history if "loss" in e] == list(range(1, 13))
    # The damaged checkpoint is kept as it was, out of the way; the re-run wrote a new, sound checkpoint-8.
    assert (checkpoints / "damaged" / "checkpoint-8" / WEIGHTS).read_bytes() == cut
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert weights.stat().st_size == size

    assert_ends_like_an_uninterrupted_run(resumed, settings_for(tmp_path / "fresh"), dataset.id)
