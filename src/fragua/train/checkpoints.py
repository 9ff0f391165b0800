"""Checkpoint completeness: the marker a Trainer checkpoint gets once all of it is written, and the newest marked one.

A killed save leaves a checkpoint folder without its marker; resuming (and the checkpoint
mirror) only trusts marked ones, so a killed or retried training continues from the last
checkpoint that was written in full.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "fragua-complete.json"
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def latest_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Newest checkpoint whose marker was written; half-written ones (a killed save) are ignored."""
    if not checkpoints_dir.is_dir():
        return None
    complete = [
        p for p in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / COMPLETE_MARKER).is_file()
    ]
    return max(complete, key=checkpoint_step, default=None)


def checkpoint_marker() -> Any:
    """The TrainerCallback that writes the marker (transformers is imported only when a run is set up)."""
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Marks a checkpoint complete once the Trainer has written all of it."""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and state.is_world_process_zero:
                # The folder may be a leftover of a killed save; it is incomplete until re-marked.
                (Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}" / COMPLETE_MARKER).unlink(missing_ok=True)

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if folder.is_dir() and state.is_world_process_zero:
                marker = {"global_step": state.global_step, "written_at": datetime.now(timezone.utc).isoformat()}
                (folder / COMPLETE_MARKER).write_text(json.dumps(marker))

    return CheckpointMarker()
