"""Checkpoint completeness and soundness: the marker a Trainer checkpoint gets once all of it is
written, the check of a marked checkpoint against it, and the newest sound checkpoint.

A killed save leaves a checkpoint folder without its marker; resuming (and the checkpoint
mirror) only trusts marked ones, so a killed or retried training continues from the last
checkpoint that was written in full. The marker records every file's size and sha256, so a
checkpoint damaged *after* it was written (a disk fault, a copy cut short, a file truncated by
hand) is caught too: resuming moves it aside into ``checkpoints/damaged/`` with one warning and
goes on from the newest sound one. A damaged checkpoint is never deleted: the user decides.
Moved out of ``checkpoint-*``, it is also out of reach of the Trainer's rotation
(``save_total_limit``), which would otherwise count it, protect it as the newest (it sorts by
mtime) and let a new save at its step overwrite it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

logger = logging.getLogger("fragua.train")

COMPLETE_MARKER = "fragua-complete.json"
MARKER_STAGING = f".{COMPLETE_MARKER}.partial"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
DAMAGED_DIR = "damaged"
# torch.save writes these as zip archives (optimizer, scheduler, RNG states, training arguments).
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class RecordedFile(BaseModel):
    size: int
    sha256: str


class CompleteMarker(BaseModel):
    """``fragua-complete.json``. ``files`` is None in markers written before Fragua recorded them."""

    global_step: int
    written_at: str | None = None
    files: dict[str, RecordedFile] | None = None


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The marked checkpoints, oldest first; half-written ones (a killed save) have no marker."""
    if not checkpoints_dir.is_dir():
        return []
    marked = [
        p for p in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / COMPLETE_MARKER).is_file()
    ]
    return sorted(marked, key=checkpoint_step)


def latest_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Newest checkpoint whose marker was written; half-written ones (a killed save) are ignored."""
    marked = complete_checkpoints(checkpoints_dir)
    return marked[-1] if marked else None


def newest_sound_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest marked checkpoint that passes ``checkpoint_problem``. Each newer damaged one is
    moved into ``checkpoints/damaged/`` with one warning naming it and what is wrong."""
    for folder in reversed(complete_checkpoints(checkpoints_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        aside = set_aside(folder, checkpoints_dir / DAMAGED_DIR)
        logger.warning("%s is damaged (%s); not resuming from it: moved it to %s (delete it once you have looked)", folder, problem, aside)
    return None


def set_aside(folder: Path, damaged_dir: Path) -> Path:
    """Move ``folder`` into ``damaged_dir`` under a name not yet taken there; returns where it went."""
    damaged_dir.mkdir(parents=True, exist_ok=True)
    target, n = damaged_dir / folder.name, 1
    while target.exists():
        n += 1
        target = damaged_dir / f"{folder.name}.{n}"
    os.rename(folder, target)
    return target


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a marked checkpoint, in a few words; None when it is sound.

    Cheapest checks first: sizes against the marker, then the headers of the weights (safetensors)
    and of torch.save's zip archives (the optimizer's among them) and that JSON files parse, then
    every file's sha256 against the marker, read in chunks."""
    try:
        marker = CompleteMarker.model_validate_json((folder / COMPLETE_MARKER).read_bytes())
    except OSError as exc:
        return f"its marker {COMPLETE_MARKER} cannot be read: {_first_line(exc)}"
    except ValidationError as exc:
        return f"its marker {COMPLETE_MARKER} cannot be read: {exc.errors()[0]['msg']}"
    recorded = marker.files or {}
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.size:
            return f"{name} is {size} bytes, its marker says {expected.size}"
    if not (folder / TRAINER_STATE).is_file():
        return f"{TRAINER_STATE} is missing"
    # Markers written before Fragua recorded sizes and hashes (``files`` is None) get only the header
    # checks below: they catch a truncated file, not a changed byte. Such runs still resume.
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        problem = _header_problem(path)
        if problem:
            return f"{path.relative_to(folder).as_posix()} {problem}"
    for name, expected in recorded.items():
        if file_sha256(folder / name) != expected.sha256:
            return f"{name} does not match the sha256 in its marker"
    return None


def _header_problem(path: Path) -> str | None:
    """Whether a file's header reads, without loading what it holds."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            # Parsing the header also checks that the tensors it lists cover the file exactly.
            with safe_open(str(path), framework="pt"):
                return None
        except SafetensorError as exc:
            return f"is not a complete safetensors file ({_first_line(exc)})"
    if path.suffix in TORCH_SUFFIXES:
        try:
            # The zip's central directory sits at the end: a cut file has none.
            with zipfile.ZipFile(path):
                return None
        except zipfile.BadZipFile as exc:
            return f"is not a complete torch file ({_first_line(exc)})"
    if path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:
            return f"is not valid JSON ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_complete_marker(folder: Path, global_step: int) -> None:
    """Record every file's size and sha256, then the marker itself (written whole, by one rename)."""
    files = {
        p.relative_to(folder).as_posix(): RecordedFile(size=p.stat().st_size, sha256=file_sha256(p))
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (COMPLETE_MARKER, MARKER_STAGING)
    }
    marker = CompleteMarker(global_step=global_step, written_at=datetime.now(timezone.utc).isoformat(), files=files)
    staging = folder / MARKER_STAGING
    staging.write_text(marker.model_dump_json(indent=1))
    os.replace(staging, folder / COMPLETE_MARKER)


def checkpoint_marker() -> Any:
    """The TrainerCallback that writes the marker (transformers is imported only when a run is set up)."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Marks a checkpoint complete once the Trainer has written all of it."""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and state.is_world_process_zero:
                # The folder may be a leftover of a killed save; it is incomplete until re-marked.
                (Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}" / COMPLETE_MARKER).unlink(missing_ok=True)

        def on_save(self, args, state, control, **kwargs):
            # Every process writes part of a checkpoint (its RNG state): all must be done before it is hashed.
            PartialState().wait_for_everyone()
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if folder.is_dir() and state.is_world_process_zero:
                write_complete_marker(folder, state.global_step)

    return CheckpointMarker()
