"""A training process killed with SIGKILL resumes from its newest complete checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fragua import jobs
from fragua.training import COMPLETE_MARKER

from .conftest import EXAMPLES, make_settings

TRAIN = {"max_steps": 20, "save_steps": 4, "logging_steps": 1, "batch_size": 8, "save_total_limit": 3}

TRAIN_JOB = """
import sys
from fragua import jobs
from fragua.settings import Settings
settings = Settings.model_validate_json(sys.argv[1])
jobs.train_model(settings, sys.argv[2])
"""


def settings_for(work):
    return make_settings(work, data={"sources": [{"path": str(EXAMPLES / "batch1")}]}, train=TRAIN)


def test_a_killed_training_resumes_where_it_stopped_and_ends_like_an_uninterrupted_one(tmp_path):
    settings = settings_for(tmp_path / "killed")
    dataset = jobs.ingest_sources(settings)
    jobs.ensure_base_model(settings)
    run_dir = settings.runs_path / jobs.training_run_id(settings, dataset.id)
    process = subprocess.Popen([sys.executable, "-c", TRAIN_JOB, settings.model_dump_json(), dataset.id],
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        marker = run_dir / "checkpoints" / "checkpoint-4" / COMPLETE_MARKER
        deadline = time.monotonic() + 300
        while not marker.is_file():
            assert process.poll() is None, "the training process ended before it could be killed"
            assert time.monotonic() < deadline, "no complete checkpoint appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert not (run_dir / "model").exists() and not (run_dir / "train_report.json").exists()

    resumed = jobs.train_model(settings, dataset.id)  # the same run id: a Prefect retry does exactly this
    step = int(resumed.resumed_from.rsplit("-", 1)[1])
    assert step >= 4 and resumed.global_step == resumed.max_steps == 20
    logged = [entry["step"] for entry in resumed.log_history if "loss" in entry]
    assert logged == list(range(1, 21))  # the history continues; no step is trained twice or skipped

    fresh_settings = settings_for(tmp_path / "fresh")
    jobs.ingest_sources(fresh_settings)
    uninterrupted = jobs.train_model(fresh_settings, dataset.id)
    assert uninterrupted.resumed_from is None and uninterrupted.global_step == 20
    assert resumed.train_loss == pytest.approx(uninterrupted.train_loss, rel=1e-3)
    assert resumed.eval_loss == pytest.approx(uninterrupted.eval_loss, rel=1e-3)

    # Asking again for a finished run returns it instead of training again.
    again = jobs.train_model(settings, dataset.id)
    assert again.finished_at == resumed.finished_at
