"""Experiment tracking behind one small interface: W&B online, offline (default) or disabled."""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fragua.settings import TrackingSettings


@dataclass
class TrackingRun:
    """What a job needs from tracking: metrics, a summary, files, and where the run lives.

    ``pending`` is the W&B run being set up (None: tracking disabled); whatever needs the run
    waits for it, and ``seconds`` counts that waiting and the run's finish (what tracking cost
    the job beyond the work it overlapped).
    """

    mode: str
    pending: Future | None = None
    seconds: float = 0.0

    @property
    def run(self) -> Any:
        if self.pending is None:
            return None
        if not self.pending.done():
            began = time.monotonic()
            wait([self.pending])
            self.seconds += time.monotonic() - began
        return self.pending.result()

    def ready(self) -> None:
        """Wait until the run is set up (its set-up error, if any, is raised here)."""
        self.run  # noqa: B018  (the property waits)

    @property
    def reference(self) -> str | None:
        """The run's id and local path (offline) or URL (online)."""
        run = self.run
        if run is None:
            return None
        return run.url if self.mode == "online" else f"{run.id} ({run.settings.sync_dir})"

    @property
    def report_to(self) -> list[str]:
        """Value for TrainingArguments.report_to: the Trainer logs into this run (once ready() returned)."""
        return ["wandb"] if self.pending is not None else []

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def summarize(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.run is not None and rows:
            import wandb

            columns = list(rows[0])
            self.run.log({key: wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})

    def log_image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})


def resolve_api_key(settings: TrackingSettings) -> str | None:
    """The W&B key from settings or from the Prefect Secret block they name."""
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    if settings.api_key_block is not None:
        from prefect.blocks.system import Secret

        return Secret.load(settings.api_key_block).get()
    return None


@contextmanager
def tracking_run(
    settings: TrackingSettings, work_dir: Path, *, name: str, job_type: str, config: dict[str, Any], background: bool = False
) -> Iterator[TrackingRun]:
    """A W&B run for one job; ``config`` must already be redacted (Settings.redacted()).

    ``background`` sets the run up (importing wandb, starting its service process) in a thread
    while the job does its own set-up; call ``ready()`` before anything logs into the run
    through wandb itself (the Trainer's W&B callback does).
    """
    if settings.mode == "disabled":
        yield TrackingRun(mode="disabled")
        return
    root = work_dir / "wandb"
    # wandb also writes caches under HOME unless told otherwise; keep everything in work_dir.
    for variable, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config")):
        os.environ.setdefault(variable, str(root / folder))
    root.mkdir(parents=True, exist_ok=True)
    api_key = resolve_api_key(settings)  # here: a Prefect Secret block is read with this thread's Prefect settings

    def start() -> Any:
        import wandb

        return wandb.init(
            mode=settings.mode,
            project=settings.project,
            entity=settings.entity,
            name=name,
            job_type=job_type,
            dir=str(root),
            config=config,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", api_key=api_key),
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fragua-tracking") as starter:
        tracker = TrackingRun(mode=settings.mode, pending=starter.submit(start))
        if not background:
            tracker.ready()
        try:
            yield tracker
        except BaseException:
            if tracker.pending.exception() is None:
                tracker.run.finish(exit_code=1)
            raise
    finishing = time.monotonic()
    tracker.run.finish()
    tracker.seconds += time.monotonic() - finishing
