"""Progress of byte transfers: a rich bar on a terminal, a few log lines everywhere else.

Transfer threads call the returned callback concurrently with byte counts (boto3's
Callback contract), so both reporters are thread-safe.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from fragua.storage.store import Progress

logger = logging.getLogger("fragua.registry")

LOG_STEPS = 4  # a line at 25 %, 50 %, 75 % and done


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def interactive() -> bool:
    return sys.stderr.isatty()


@contextmanager
def transfer_progress(description: str, total: int) -> Iterator[Progress]:
    """A callback counting transferred bytes toward ``total``, shown while the block runs."""
    if interactive() and total > 0:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
        from rich.progress import Progress as Bar

        with Bar(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda count: bar.advance(task, count)
        return
    lock = threading.Lock()
    state = {"done": 0, "next_step": 1}
    started = time.perf_counter()

    def advance(count: int) -> None:
        with lock:
            state["done"] += count
            while total and state["next_step"] < LOG_STEPS and state["done"] >= total * state["next_step"] / LOG_STEPS:
                logger.info("%s: %d %% of %s", description, 100 * state["next_step"] // LOG_STEPS, human_bytes(total))
                state["next_step"] += 1

    yield advance
    elapsed = max(time.perf_counter() - started, 1e-9)
    logger.info("%s: %s in %.1f s (%s/s)", description, human_bytes(state["done"]), elapsed, human_bytes(state["done"] / elapsed))
