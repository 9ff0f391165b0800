"""The checkpoint validator: a marked checkpoint is trusted only when its files match the sizes and
hashes its marker recorded and their headers read; resuming sets damaged ones aside."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers.trainer_utils import rotate_checkpoints

from fragua.train.checkpoints import (
    COMPLETE_MARKER,
    DAMAGED_DIR,
    checkpoint_problem,
    newest_sound_checkpoint,
    write_complete_marker,
)

WEIGHTS = "adapter_model.safetensors"


def real_checkpoint(root, step: int, *, legacy_marker: bool = False):
    """A checkpoint with the files the Trainer writes for LoRA: safetensors weights, torch.save archives, JSON state."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.randn(16, 8), "lora_B": torch.randn(8, 16)}, folder / WEIGHTS)
    torch.save({"state": {0: {"exp_avg": torch.randn(64)}}, "param_groups": [{"lr": 1e-4}]}, folder / "optimizer.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if legacy_marker:  # what Fragua wrote before markers recorded sizes and hashes
        (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": step, "written_at": "2026-01-01T00:00:00+00:00"}))
    else:
        write_complete_marker(folder, step)
    return folder


def truncate_to_half(path):
    os.truncate(path, path.stat().st_size // 2)


def flip_a_byte(path, offset_from_end: int = 5):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_marker_records_every_file_and_a_sound_checkpoint_passes(tmp_path):
    folder = real_checkpoint(tmp_path, 4)
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    assert marker["global_step"] == 4
    assert sorted(marker["files"]) == [WEIGHTS, "optimizer.pt", "rng_state.pth", "trainer_state.json"]
    assert marker["files"][WEIGHTS]["size"] == (folder / WEIGHTS).stat().st_size and len(marker["files"][WEIGHTS]["sha256"]) == 64
    assert checkpoint_problem(folder) is None


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda f: truncate_to_half(f / WEIGHTS), f"{WEIGHTS} is \\d+ bytes, its marker says \\d+"),
    (lambda f: flip_a_byte(f / WEIGHTS), f"{WEIGHTS} does not match the sha256 in its marker"),
    (lambda f: flip_a_byte(f / "optimizer.pt", offset_from_end=200), "optimizer.pt does not match the sha256 in its marker"),
    (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda f: (f / COMPLETE_MARKER).write_text('{"global_st'), f"its marker {COMPLETE_MARKER} cannot be read"),
], ids=["truncated-weights", "flipped-byte-weights", "flipped-byte-optimizer", "missing-optimizer", "cut-marker"])
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tmp_path, damage, expected):
    folder = real_checkpoint(tmp_path, 4)
    damage(folder)
    problem = checkpoint_problem(folder)
    assert problem is not None and re.fullmatch(expected + ".*", problem), problem


def test_a_legacy_marker_is_accepted_when_the_headers_read_and_refused_when_a_file_is_cut(tmp_path):
    sound = real_checkpoint(tmp_path, 4, legacy_marker=True)
    assert checkpoint_problem(sound) is None
    cut_weights = real_checkpoint(tmp_path, 8, legacy_marker=True)
    truncate_to_half(cut_weights / WEIGHTS)
    assert checkpoint_problem(cut_weights).startswith(f"{WEIGHTS} is not a complete safetensors file (")
    cut_optimizer = real_checkpoint(tmp_path, 12, legacy_marker=True)
    truncate_to_half(cut_optimizer / "optimizer.pt")
    assert checkpoint_problem(cut_optimizer).startswith("optimizer.pt is not a complete torch file (")
    no_state = real_checkpoint(tmp_path, 16, legacy_marker=True)
    (no_state / "trainer_state.json").unlink()
    assert checkpoint_problem(no_state) == "trainer_state.json is missing"


def test_resume_sets_damaged_checkpoints_aside_with_one_warning_each_and_the_trainer_rotation_ignores_them(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    real_checkpoint(checkpoints, 4)
    real_checkpoint(checkpoints, 8, legacy_marker=True)
    truncate_to_half(real_checkpoint(checkpoints, 12) / WEIGHTS)
    flip_a_byte(real_checkpoint(checkpoints, 16) / "optimizer.pt", offset_from_end=200)
    cut_bytes = (checkpoints / "checkpoint-12" / WEIGHTS).read_bytes()

    with caplog.at_level(logging.INFO, logger="fragua.train"):
        assert newest_sound_checkpoint(checkpoints) == checkpoints / "checkpoint-8"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "checkpoint-16 is damaged (optimizer.pt does not match the sha256 in its marker)" in warnings[0]
    assert f"checkpoint-12 is damaged ({WEIGHTS} is" in warnings[1] and str(checkpoints / DAMAGED_DIR / "checkpoint-12") in warnings[1]
    # Nothing deleted: the damaged checkpoints are kept, byte for byte, out of the checkpoint-* names.
    assert (checkpoints / DAMAGED_DIR / "checkpoint-12" / WEIGHTS).read_bytes() == cut_bytes
    assert (checkpoints / DAMAGED_DIR / "checkpoint-16" / "optimizer.pt").is_file()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-8", DAMAGED_DIR]

    # The same step damaged again later goes next to the first one, not over it.
    truncate_to_half(real_checkpoint(checkpoints, 12) / WEIGHTS)
    assert newest_sound_checkpoint(checkpoints) == checkpoints / "checkpoint-8"
    assert sorted(p.name for p in (checkpoints / DAMAGED_DIR).iterdir()) == ["checkpoint-12", "checkpoint-12.2", "checkpoint-16"]

    # The Trainer's rotation (save_total_limit) sees only the checkpoint-* folders.
    real_checkpoint(checkpoints, 20)
    rotate_checkpoints(output_dir=str(checkpoints), save_total_limit=1, use_mtime=True)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-20", DAMAGED_DIR]
    assert len(list((checkpoints / DAMAGED_DIR).iterdir())) == 3


def test_no_sound_checkpoint_means_starting_over(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (real_checkpoint(checkpoints, 4) / "optimizer.pt").unlink()
    assert newest_sound_checkpoint(checkpoints) is None
    assert newest_sound_checkpoint(tmp_path / "nothing-here") is None
