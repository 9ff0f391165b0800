"""Experiment tracking behind one small interface: W&B online, offline (default) or disabled."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fragua.settings import TrackingSettings


@dataclass
class TrackingRun:
    """What a job needs from tracking: metrics, a summary, files, and where the run lives."""

    mode: str
    run: Any = None
    reference: str | None = None  # run id and local path (offline) or URL (online)
    seconds: float = 0.0  # spent setting the run up and finishing it (a job's report shows it)

    @property
    def report_to(self) -> list[str]:
        """Value for TrainingArguments.report_to: the Trainer logs into this run."""
        return ["wandb"] if self.run is not None else []

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
    settings: TrackingSettings, work_dir: Path, *, name: str, job_type: str, config: dict[str, Any]
) -> Iterator[TrackingRun]:
    """A W&B run for one job; ``config`` must already be redacted (Settings.redacted())."""
    if settings.mode == "disabled":
        yield TrackingRun(mode="disabled")
        return
    began = time.monotonic()
    import wandb

    root = work_dir / "wandb"
    # wandb also writes caches under HOME unless told otherwise; keep everything in work_dir.
    for variable, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config")):
        os.environ.setdefault(variable, str(root / folder))
    root.mkdir(parents=True, exist_ok=True)
    api_key = resolve_api_key(settings)
    run = wandb.init(
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
    reference = run.url if settings.mode == "online" else f"{run.id} ({run.settings.sync_dir})"
    tracker = TrackingRun(mode=settings.mode, run=run, reference=reference, seconds=time.monotonic() - began)
    try:
        yield tracker
    except BaseException:
        run.finish(exit_code=1)
        raise
    finishing = time.monotonic()
    run.finish()
    tracker.seconds += time.monotonic() - finishing
