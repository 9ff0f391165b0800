"""The `requests` group: what `fragua serve` logged (with serve.log_requests), exported for `fragua import-data`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from fragua.cli.common import console, load_settings, raise_user, run_step
from fragua.cli.render import kv_table

requests_app = typer.Typer(help="Requests `fragua serve` answered, as kept in the intake database.", no_args_is_help=True)


class RatingChoice(str, Enum):
    good = "good"
    bad = "bad"
    any = "any"


@requests_app.command("export")
def export(
    ctx: typer.Context,
    output: Path = typer.Argument(..., help="JSONL file to write (chat format: messages, then the answer)."),
    version: Optional[str] = typer.Option(None, "--version", help="Only requests this version answered."),
    rating: RatingChoice = typer.Option(RatingChoice.any, "--rating", help="Only responses rated good (1) or bad (-1), or any."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Write logged conversations as JSONL that `fragua import-data` queues; a correction given as feedback replaces the served answer."""
    from fragua.intake.queue import IntakeError, QueueUnavailable
    from fragua.intake.serving_log import ServingLog

    settings = load_settings(ctx)
    if output.exists() and not overwrite:
        raise_user(f"{output} exists; choose another file or pass --overwrite")
    try:
        log = ServingLog(settings)
    except (IntakeError, QueueUnavailable) as exc:
        raise_user(str(exc))
    count = run_step(lambda: log.export(output, version=version, rating=rating.value))
    console.print(kv_table("Requests export", [
        ("file", output), ("written", count.written),
        ("left out (not logged: serve.log_requests off, or failed)", count.without_text),
        ("next", f"fragua import-data {output}"),
    ]))
