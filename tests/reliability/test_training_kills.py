"""Training killed with SIGKILL at three different points: each re-run resumes from the newest
*complete* checkpoint, and the finished run equals one that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fragua.jobs.data import ingest_sources
from fragua.jobs.train import train_model, training_run_id
from fragua.models.tiny import ensure_base_model
from fragua.train.checkpoints import latest_complete_checkpoint

from ..conftest import EXAMPLES, make_settings

TRAIN = {"max_steps": 20, "save_steps": 4, "logging_steps": 1, "batch_size": 8, "save_total_limit": 3}

# The training job as a Prefect retry runs it, in a process of its own; one line per step.
TRAIN_JOB = """
import sys
from fragua.jobs.train import train_model
from fragua.settings import Settings
settings = Settings.model_validate_json(sys.argv[1])
train_model(settings, sys.argv[2], progress=lambda event: print("step", event["step"], flush=True))
"""


def settings_for(work):
    return make_settings(work, data={"sources": [{"path": str(EXAMPLES / "batch1")}]}, train=TRAIN)


def train_until_killed(settings, dataset_id: str, kill_at_step: int) -> None:
    """Start the training job and SIGKILL it as soon as it reports ``kill_at_step``."""
    process = subprocess.Popen([sys.executable, "-c", TRAIN_JOB, settings.model_dump_json(), dataset_id],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.split() == ["step", str(kill_at_step)]:
                process.send_signal(signal.SIGKILL)
                break
        assert process.wait(timeout=120) == -signal.SIGKILL, f"the training ended before step {kill_at_step}"
    finally:
        if process.poll() is None:
            process.kill()


def assert_ends_like_an_uninterrupted_run(resumed, fresh_settings, dataset_id: str) -> None:
    """Train the same data from scratch in a fresh work dir: the resumed run's losses and adapter
    weights must equal that uninterrupted run's."""
    ingest_sources(fresh_settings)
    uninterrupted = train_model(fresh_settings, dataset_id)
    assert uninterrupted.resumed_from is None and uninterrupted.global_step == resumed.global_step
    assert resumed.train_loss == pytest.approx(uninterrupted.train_loss, rel=1e-3)
    assert resumed.eval_loss == pytest.approx(uninterrupted.eval_loss, rel=1e-3)
    ours = load_file(f"{resumed.adapter_dir}/adapter_model.safetensors")
    theirs = load_file(f"{uninterrupted.adapter_dir}/adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.allclose(tensor, theirs[name], rtol=1e-3, atol=1e-5), name


@pytest.mark.slow(seconds=90)
def test_training_killed_at_three_points_resumes_each_time_and_ends_like_an_uninterrupted_run(tmp_path):
    settings = settings_for(tmp_path / "killed")
    dataset = ingest_sources(settings)
    ensure_base_model(settings)
    run_dir = settings.runs_path / training_run_id(settings, dataset.id)
    checkpoints = run_dir / "checkpoints"

    # 1. before the first checkpoint: nothing to resume from; the re-run starts over.
    train_until_killed(settings, dataset.id, kill_at_step=2)
    assert latest_complete_checkpoint(checkpoints) is None
    # 2. at step 8, when the Trainer starts writing checkpoint-8: a half-written one is ignored.
    train_until_killed(settings, dataset.id, kill_at_step=8)
    after_second = latest_complete_checkpoint(checkpoints)
    assert after_second is not None and after_second.name in ("checkpoint-4", "checkpoint-8")
    # 3. at step 14, between checkpoints.
    train_until_killed(settings, dataset.id, kill_at_step=14)
    after_third = latest_complete_checkpoint(checkpoints)
    assert after_third is not None and after_third.name == "checkpoint-12"
    assert not (run_dir / "model").exists() and not (run_dir / "train_report.json").exists()

    resumed = train_model(settings, dataset.id)  # the same run id: a Prefect retry does exactly this
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-12")
    assert resumed.global_step == resumed.max_steps == 20
    logged = [entry["step"] for entry in resumed.log_history if "loss" in entry]
    assert logged == list(range(1, 21))  # the history continues; no step is counted twice or skipped

    assert_ends_like_an_uninterrupted_run(resumed, settings_for(tmp_path / "fresh"), dataset.id)

    # Asking again for a finished run returns it instead of training again.
    again = train_model(settings, dataset.id)
    assert again.finished_at == resumed.finished_at
