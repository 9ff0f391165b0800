"""Training checkpoints mirrored to the registry's storage (``train.checkpoint_store = "registry"``).

A run trained on a machine that goes away (a preempted pod, a spot instance) loses its
local checkpoints; with the mirror a retry anywhere resumes from the newest one in the
bucket. Complete checkpoints (the Trainer's folder plus Fragua's completeness marker) are
uploaded while training goes on, the marker last, so a checkpoint in the bucket without
its marker is one whose upload was cut and is never resumed from. A downloaded checkpoint is
checked against its marker's sizes and hashes like a local one; a damaged one is moved aside
in the bucket (``checkpoints/<run id>/damaged/``, never deleted) with one warning and the next
older one is tried. Layout: ``checkpoints/<run id>/checkpoint-<step>/<file>``; the newest
``train.save_total_limit`` are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from fragua.storage.store import ObjectStore
from fragua.train.checkpoints import (
    CHECKPOINT_PREFIX,
    COMPLETE_MARKER,
    DAMAGED_DIR,
    TRAINER_STATE,
    checkpoint_problem,
    checkpoint_step,
    latest_complete_checkpoint,
    newest_sound_checkpoint,
)

logger = logging.getLogger("fragua.train")

CHECKPOINTS_PREFIX = "checkpoints"


class CheckpointMirror:
    """The checkpoints of one run in an object store: upload, restore, prune."""

    def __init__(self, objects: ObjectStore, run_id: str, keep: int) -> None:
        self.objects = objects
        self.prefix = f"{CHECKPOINTS_PREFIX}/{run_id}/"
        self.keep = keep

    def describe(self) -> str:
        return f"{self.objects.describe()}/{self.prefix}"

    def complete_steps(self) -> list[int]:
        """Steps of the checkpoints whose upload finished (their marker is there), oldest first."""
        steps = []
        for name in self.objects.list_children(self.prefix):
            if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit():
                if self.objects.exists(f"{self.prefix}{name}/{COMPLETE_MARKER}"):
                    steps.append(int(name[len(CHECKPOINT_PREFIX):]))
        return sorted(steps)

    def upload(self, folder: Path) -> bool:
        """Upload a complete local checkpoint, marker last; False if the Trainer removed it meanwhile."""
        base = f"{self.prefix}{folder.name}/"
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
        try:
            self.objects.put_files([(base + p.relative_to(folder).as_posix(), p) for p in files])
            self.objects.put_file(base + COMPLETE_MARKER, folder / COMPLETE_MARKER)
        except FileNotFoundError:
            # Rotated away by save_total_limit while uploading: a newer checkpoint exists.
            return False
        self.prune()
        return True

    def prune(self) -> None:
        """Drop all but the newest ``keep`` complete checkpoints (markers first: never a half-deleted one that looks complete)."""
        for step in self.complete_steps()[: -self.keep]:
            base = f"{self.prefix}{CHECKPOINT_PREFIX}{step}/"
            self.objects.delete(base + COMPLETE_MARKER)
            self.objects.delete_many(self.objects.list_keys(base))

    def remove_all(self) -> int:
        """Delete every mirrored checkpoint of the run (markers first), once its model is published; objects deleted."""
        markers = [f"{self.prefix}{CHECKPOINT_PREFIX}{step}/{COMPLETE_MARKER}" for step in self.complete_steps()]
        self.objects.delete_many(markers)
        rest = self.objects.list_keys(self.prefix)
        self.objects.delete_many(rest)
        return len(markers) + len(rest)

    def restore(self, checkpoints_dir: Path) -> Path | None:
        """Download the newest sound mirrored checkpoint if no newer sound one is on local disk; returns what was downloaded.

        The checkpoint with the best validation loss that the newest one names (early stopping)
        comes with it, so that the end of training can still load it."""
        steps = self.complete_steps()
        local = newest_sound_checkpoint(checkpoints_dir)
        newest = None
        for step in reversed(steps):
            if local is not None and checkpoint_step(local) >= step:
                return None
            newest = self._download(step, checkpoints_dir)
            if newest is not None:
                break
        if newest is None:
            return None
        best = json.loads((newest / TRAINER_STATE).read_text()).get("best_model_checkpoint") if (newest / TRAINER_STATE).is_file() else None
        if best:
            name = Path(best).name
            if name != newest.name and name[len(CHECKPOINT_PREFIX):].isdigit() and int(name[len(CHECKPOINT_PREFIX):]) in steps:
                self._download(int(name[len(CHECKPOINT_PREFIX):]), checkpoints_dir)
        logger.info("restored %s from %s", newest.name, self.describe())
        return newest

    def _download(self, step: int, checkpoints_dir: Path) -> Path | None:
        """The mirrored checkpoint ``step`` in ``checkpoints_dir``; None (and it set aside in the bucket) when it is damaged."""
        target = checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"
        if (target / COMPLETE_MARKER).is_file():
            return target
        base = f"{self.prefix}{CHECKPOINT_PREFIX}{step}/"
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=checkpoints_dir))
        keys = [k for k in self.objects.list_keys(base) if k != base + COMPLETE_MARKER]
        self.objects.get_files([(k, staging / k[len(base):]) for k in keys])
        # The marker last, as on upload: a download cut short leaves no complete-looking folder.
        self.objects.get_file(base + COMPLETE_MARKER, staging / COMPLETE_MARKER)
        problem = checkpoint_problem(staging)
        if problem is not None:
            aside = self._set_aside(step, staging)
            logger.warning("mirrored %s%s is damaged (%s); not resuming from it: moved it to %s%s (delete it once you have looked)",
                           self.describe(), target.name, problem, self.objects.describe(), aside)
            shutil.rmtree(staging)
            return None
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
        return target

    def _set_aside(self, step: int, downloaded: Path) -> str:
        """Move a damaged mirrored checkpoint to ``damaged/`` in the bucket (from its downloaded copy; the
        marker goes first so that it never looks complete half-moved); returns the new prefix."""
        base = f"{self.prefix}{CHECKPOINT_PREFIX}{step}/"
        aside = f"{self.prefix}{DAMAGED_DIR}/{CHECKPOINT_PREFIX}{step}/"
        n = 1
        while self.objects.list_keys(aside):
            n += 1
            aside = f"{self.prefix}{DAMAGED_DIR}/{CHECKPOINT_PREFIX}{step}.{n}/"
        self.objects.put_files([(aside + p.relative_to(downloaded).as_posix(), p) for p in sorted(downloaded.rglob("*")) if p.is_file()])
        self.objects.delete(base + COMPLETE_MARKER)
        self.objects.delete_many(self.objects.list_keys(base))
        return aside


class MirrorWatch:
    """Uploads each new complete checkpoint under ``checkpoints_dir`` in a background thread while
    training runs (in this process or in torchrun workers); on exit, uploads what is left and
    raises any upload error, so a run never ends without its last checkpoint mirrored."""

    def __init__(self, mirror: CheckpointMirror, checkpoints_dir: Path, interval: float = 1.0) -> None:
        self.mirror = mirror
        self.checkpoints_dir = checkpoints_dir
        self.interval = interval
        self.uploaded = max(mirror.complete_steps(), default=-1)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fragua-checkpoint-mirror", daemon=True)

    def sync(self) -> None:
        newest = latest_complete_checkpoint(self.checkpoints_dir)
        if newest is not None and checkpoint_step(newest) > self.uploaded and self.mirror.upload(newest):
            self.uploaded = checkpoint_step(newest)
            logger.info("mirrored %s to %s", newest.name, self.mirror.describe())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception as exc:  # re-raised on exit, where the run can fail with it
                self.error = exc
                return

    def __enter__(self) -> MirrorWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if kind is not None:
            # Training failed: mirror what it left for the retry, without hiding why it failed.
            try:
                self.sync()
            except Exception as exc:
                logger.warning("could not mirror the last checkpoint to %s: %s", self.mirror.describe(), exc)
            return
        if self.error is not None:
            raise self.error
        self.sync()
