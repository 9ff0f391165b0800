"""Checkpoints mirrored to the registry's storage: a run killed on one machine resumes on another."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from fragua.jobs.data import ingest_sources
from fragua.jobs.train import train_model, training_run_id
from fragua.models.tiny import ensure_base_model
from fragua.storage import open_store
from fragua.storage.store import LocalStore
from fragua.train.checkpoint_mirror import CheckpointMirror, MirrorWatch
from fragua.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint, write_complete_marker

from .conftest import EXAMPLES, make_settings

TRAIN = {"max_steps": 24, "save_steps": 4, "logging_steps": 1, "batch_size": 8, "save_total_limit": 2, "checkpoint_store": "registry"}

# The training job in a process of its own. At step 10 it waits (up to a minute) until the
# mirror has uploaded checkpoint-8, then reports the step: the test kills it there, so the
# kill never races the upload however fast the machine trains.
TRAIN_JOB = """
import sys, time
from fragua.jobs.train import train_model, training_run_id
from fragua.settings import Settings
from fragua.storage import open_store
from fragua.train.checkpoint_mirror import CheckpointMirror
settings = Settings.model_validate_json(sys.argv[1])
mirror = CheckpointMirror(open_store(settings), training_run_id(settings, sys.argv[2]), keep=2)

def report(event):
    if event["step"] == 10:
        deadline = time.monotonic() + 60
        while max(mirror.complete_steps(), default=0) < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
    print("step", event["step"], flush=True)

train_model(settings, sys.argv[2], progress=report)
"""


def fake_checkpoint(root, step: int, *, complete: bool = True, state: dict | None = None):
    folder = root / f"checkpoint-{step}"
    (folder / "nested").mkdir(parents=True)
    save_file({"lora_A": torch.randn(4, 4)}, folder / "adapter_model.safetensors")
    (folder / "nested" / "shard_0.dat").write_bytes(os.urandom(32))
    (folder / "trainer_state.json").write_text(json.dumps(state or {"global_step": step}))
    if complete:
        write_complete_marker(folder, step)
    return folder


def test_mirror_uploads_complete_checkpoints_keeps_the_newest_and_restores_them(tmp_path):
    mirror = CheckpointMirror(LocalStore(tmp_path / "bucket"), "run-a", keep=2)
    local = tmp_path / "machine-1" / "checkpoints"
    for step in (4, 8, 12):
        mirror.upload(fake_checkpoint(local, step, state={"best_model_checkpoint": str(local / "checkpoint-8")}))
    fake_checkpoint(local, 16, complete=False)  # being written: never mirrored
    with MirrorWatch(mirror, local, interval=0.05):
        time.sleep(0.2)
    assert mirror.complete_steps() == [8, 12]

    elsewhere = tmp_path / "machine-2" / "checkpoints"
    restored = mirror.restore(elsewhere)
    assert restored == elsewhere / "checkpoint-12" and latest_complete_checkpoint(elsewhere) == restored
    assert (restored / "nested" / "shard_0.dat").read_bytes() == (local / "checkpoint-12" / "nested" / "shard_0.dat").read_bytes()
    # The best checkpoint the newest one names comes too (early stopping loads it at the end).
    assert (elsewhere / "checkpoint-8" / COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["checkpoint-12", "checkpoint-8"]
    # A local checkpoint as new as the mirror's wins: nothing is downloaded.
    assert mirror.restore(local) is None


def test_upload_cut_before_the_marker_is_not_resumed_from(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    mirror = CheckpointMirror(store, "run-b", keep=3)
    mirror.upload(fake_checkpoint(tmp_path / "local", 4))
    half = fake_checkpoint(tmp_path / "local", 8)
    store.put_file("checkpoints/run-b/checkpoint-8/adapter_model.safetensors", half / "adapter_model.safetensors")
    assert mirror.complete_steps() == [4]
    assert mirror.restore(tmp_path / "fresh") == tmp_path / "fresh" / "checkpoint-4"


def test_a_damaged_mirrored_checkpoint_is_set_aside_in_the_bucket_and_the_older_one_restored(tmp_path, caplog):
    bucket = LocalStore(tmp_path / "bucket")
    mirror = CheckpointMirror(bucket, "run-c", keep=3)
    for step in (4, 8):
        mirror.upload(fake_checkpoint(tmp_path / "local", step))
    weights = bucket.path("checkpoints/run-c/checkpoint-8/adapter_model.safetensors")
    cut = weights.read_bytes()[:-3]
    weights.write_bytes(cut)  # a flaky copy: the bucket's object is short

    with caplog.at_level(logging.INFO, logger="fragua.train"):
        assert mirror.restore(tmp_path / "fresh") == tmp_path / "fresh" / "checkpoint-4"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "checkpoint-8 is damaged (adapter_model.safetensors is" in warnings[0]
    # Kept in the bucket, out of the mirror's checkpoints (so neither resumed from, counted by prune, nor taken as uploaded).
    assert mirror.complete_steps() == [4]
    assert bucket.path("checkpoints/run-c/damaged/checkpoint-8/adapter_model.safetensors").read_bytes() == cut
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["checkpoint-4"]  # no download left behind


def test_a_damaged_local_checkpoint_does_not_hide_a_sound_mirrored_one_of_the_same_step(tmp_path):
    mirror = CheckpointMirror(LocalStore(tmp_path / "bucket"), "run-d", keep=3)
    mirror.upload(fake_checkpoint(tmp_path / "machine-1", 8))
    local = tmp_path / "machine-2"
    fake_checkpoint(local, 8)
    (local / "checkpoint-8" / "trainer_state.json").write_text("{}")  # rewritten since: its size no longer matches the marker
    assert mirror.restore(local) == local / "checkpoint-8"
    assert (local / "damaged" / "checkpoint-8" / "trainer_state.json").read_text() == "{}"
    assert latest_complete_checkpoint(local) == local / "checkpoint-8"


def _settings(work, registry, stream: bool, **train):
    data = {"sources": [{"path": str(EXAMPLES / "batch1")}], "store": "registry" if stream else "local"}
    return make_settings(work, data=data, train={**TRAIN, "stream_data": stream, **train}, registry=registry)


# With stream_data the pod keeps nothing at all: data read from the bucket, checkpoints written there.
@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["local-data", "streamed-data"])
def test_run_killed_on_one_machine_resumes_from_s3_on_another_and_ends_like_an_uninterrupted_run(tmp_path, s3_settings, stream):
    first = _settings(tmp_path / "machine-1", s3_settings, stream)
    dataset = ingest_sources(first)
    ensure_base_model(first)
    run_id = training_run_id(first, dataset.id)
    mirror = CheckpointMirror(open_store(first), run_id, keep=2)

    secret = s3_settings.secret_access_key.get_secret_value()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "FRAGUA_REGISTRY__SECRET_ACCESS_KEY": secret}
    job = subprocess.Popen([sys.executable, "-c", TRAIN_JOB, first.model_dump_json(exclude={"registry": {"secret_access_key"}}), dataset.id],
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert job.stdout is not None
        for line in job.stdout:
            if line.split() == ["step", "10"]:
                job.send_signal(signal.SIGKILL)
                break
        assert job.wait(timeout=180) == -signal.SIGKILL, "training ended before step 10"
    finally:
        if job.poll() is None:
            job.kill()
    mirrored = max(mirror.complete_steps())
    assert mirrored >= 8, "killed at step 10: checkpoint-8 (or a newer one) is in the bucket"

    second = _settings(tmp_path / "machine-2", s3_settings, stream)  # nothing of the first machine's work dir
    if not stream:
        assert ingest_sources(second).id == dataset.id
    resumed = train_model(second, dataset.id)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith(f"checkpoint-{mirrored}")
    assert resumed.global_step == 24
    assert [e["step"] for e in resumed.log_history if "loss" in e] == list(range(1, 25))
    # The last checkpoint is always mirrored (the watcher skips ones a newer save overtook); at most save_total_limit stay.
    steps = mirror.complete_steps()
    assert steps[-1] == 24 and len(steps) <= 2

    local_only = _settings(tmp_path / "machine-3", s3_settings, stream, checkpoint_store="local")
    if not stream:
        ingest_sources(local_only)
    uninterrupted = train_model(local_only, dataset.id)
    assert uninterrupted.resumed_from is None
    ours, theirs = load_file(f"{resumed.adapter_dir}/adapter_model.safetensors"), load_file(f"{uninterrupted.adapter_dir}/adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.allclose(tensor, theirs[name], rtol=1e-3, atol=1e-5), name
