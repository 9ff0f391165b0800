"""Two CPU training processes (torchrun, gloo) match one process on the same effective batch."""

from __future__ import annotations

import json

import pytest

from fragua.jobs.data import ingest_sources
from fragua.jobs.train import train_model
from fragua.train.checkpoints import COMPLETE_MARKER, checkpoint_problem

from .conftest import EXAMPLES, make_settings


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    common = {"max_steps": 8, "save_steps": 4, "logging_steps": 2, "learning_rate": 3e-3}
    data = {"sources": [{"path": str(EXAMPLES / "batch1")}]}
    single_settings = make_settings(tmp_path / "one", data=data, train={**common, "batch_size": 8})
    dataset = ingest_sources(single_settings)
    single = train_model(single_settings, dataset.id)

    events = []
    double_settings = make_settings(tmp_path / "two", data=data, train={**common, "batch_size": 4, "num_processes": 2})
    ingest_sources(double_settings)
    double = train_model(double_settings, dataset.id, progress=events.append)

    assert double.num_processes == 2 and single.num_processes == 1
    assert double.global_step == single.global_step == 8
    assert [e["step"] for e in events] == [2, 4, 6, 8]  # process 0's progress reaches the caller
    # Same effective batch (2 x 4 = 8); the shards differ in order, so the losses agree closely, not exactly.
    assert double.train_loss == pytest.approx(single.train_loss, rel=0.05)
    assert double.eval_loss == pytest.approx(single.eval_loss, rel=0.05)
    assert (tmp_path / "two" / "runs" / double.run_id / "model" / "adapter_model.safetensors").is_file()
    # Both processes wrote their RNG state before process 0 hashed the checkpoint for its marker.
    checkpoint = tmp_path / "two" / "runs" / double.run_id / "checkpoints" / "checkpoint-8"
    recorded = json.loads((checkpoint / COMPLETE_MARKER).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= recorded.keys() and checkpoint_problem(checkpoint) is None
