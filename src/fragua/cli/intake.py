"""Intake queue commands: `add` one example, `import-data` a file, `status` of the queue, `serve-api` for HTTP intake."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError

from fragua.cli.common import console, exit_on_sigterm, load_settings, raise_user, run_step
from fragua.cli.render import autotrain_runs_table, kv_table, served_table
from fragua.settings import Settings, SourceSpec, describe_validation_error


def _queue(settings: Settings) -> Any:
    from fragua.intake.queue import IntakeError, IntakeQueue, QueueUnavailable

    try:
        return IntakeQueue.from_settings(settings)
    except (IntakeError, QueueUnavailable) as exc:  # a bad intake.database_url, a database down
        raise_user(str(exc))


def add(
    ctx: typer.Context,
    question: str = typer.Argument(..., help="The question."),
    answer: str = typer.Argument(..., help="The answer the model should learn."),
    domain: Optional[str] = typer.Option(None, help="Domain of the example (default: routed by ingest)."),
    system: Optional[str] = typer.Option(None, help="System prompt before the question."),
    key: Optional[str] = typer.Option(None, "--key", help="Idempotency key: adding the same key again adds nothing."),
    meta: Optional[str] = typer.Option(None, help="JSON object kept with the example."),
) -> None:
    """Add one question/answer example to the intake queue."""
    from fragua.intake.queue import IntakeError, RowError, question_answer_record

    settings = load_settings(ctx)
    limit = settings.intake.max_example_chars
    for label, text in (("question", question), ("answer", answer), ("--system", system or "")):
        if len(text) > limit:
            raise_user(f"{label} is {len(text)} characters, longer than intake.max_example_chars ({limit})")
    try:
        record = question_answer_record(question, answer, system=system, domain=domain, meta=_meta_option(meta, settings.intake.max_meta_depth))
        added = _queue(settings).add(record, key=key, origin="cli")
    except (IntakeError, RowError) as exc:
        raise_user(str(exc))
    verb = "added" if added.created else "already queued (same key)"
    console.print(f"example {added.example.id} {verb}: {added.example.status}", highlight=False)


def _meta_option(text: str | None, max_meta_depth: int) -> dict:
    """``--meta`` under the intake API's rules: a JSON object of finite numbers, 64-bit integers,
    valid Unicode, at most intake.max_meta_depth levels deep."""
    from fragua.intake.jsonbody import meta_problems

    if not text:
        return {}
    value, problems = meta_problems(text, max_meta_depth=max_meta_depth)
    if problems:
        first = problems[0]
        raise_user(f"--meta: {'.'.join(str(part) for part in first['loc'])}: {first['msg']}")
    if not isinstance(value, dict):
        raise_user(f"--meta must be a JSON object, got {type(value).__name__}")
    return value


def import_data(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A file or folder in any format ingest reads (JSONL, JSON, CSV, Parquet; alpaca, chat, SQuAD, ...)."),
    format: str = typer.Option("auto", "--format", help="Row format; auto detects it like ingest."),
    domain: Optional[str] = typer.Option(None, help="Domain for rows without one."),
) -> None:
    """Queue every example of FILE for autotrain; importing the same rows twice adds nothing."""
    from fragua.intake.files import read_examples
    from fragua.intake.queue import IntakeError

    settings = load_settings(ctx)
    try:
        SourceSpec(path=str(file), format=format, domain=domain)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise_user(describe_validation_error(exc))
    found = run_step(lambda: read_examples(str(file), settings.data, format=format, domain=domain))
    added: list[Any] = []
    queue = _queue(settings)
    chunk = settings.intake.max_batch_examples
    try:
        for start in range(0, len(found.items), chunk):
            added += queue.add_many(found.items[start:start + chunk], origin=f"import:{file.name}")
    except IntakeError as exc:
        raise_user(str(exc))
    created = sum(a.created for a in added)
    rows = [("file", file), ("formats", ", ".join(sorted(set(found.formats.values()))) or "-"), ("added", created),
            ("already queued", len(added) - created), ("rejected rows", len(found.rejected)), ("pending now", queue.counts()["pending"])]
    console.print(kv_table("Import", rows))
    for reason in found.rejected[:20]:
        console.print(f"[yellow]rejected:[/yellow] {reason}", highlight=False)
    if len(found.rejected) > 20:
        console.print(f"[yellow]… and {len(found.rejected) - 20} more rejected rows[/yellow]")
    if found.rejected and not added:
        raise typer.Exit(1)


def status(ctx: typer.Context) -> None:
    """The intake queue (examples per status), production and canary, what each version served, recent autotrain runs."""
    from fragua.intake.serving_log import ServingLog
    from fragua.registry import open_registry
    from fragua.registry.canary import split_share

    settings = load_settings(ctx)
    queue = _queue(settings)
    counts = queue.counts()
    split = split_share(run_step(lambda: open_registry(settings).aliases()))
    canary = [("canary", f"{split.canary} ({split.canary_percent:g}% of production's requests)")] if split.canary else []
    console.print(kv_table("Fragua", [
        ("production", split.production or "none yet"),
        *canary,
        ("queue", queue.describe()),
        *counts.items(),
        ("autotrain needs", f"{settings.intake.min_new_examples} pending"),
    ]))
    duplicates = queue.examples("duplicate", limit=5)
    for example in duplicates:
        console.print(f"example {example.id} ({example.idempotency_key}): {example.last_error}", highlight=False, soft_wrap=True)
    if counts["duplicate"] > len(duplicates):
        console.print(f"... and {counts['duplicate'] - len(duplicates)} more duplicates", highlight=False)
    served = ServingLog(settings).version_stats()
    if served:
        console.print(served_table(sorted(served.values(), key=lambda item: item.version)))
    runs = queue.runs(10)
    if runs:
        console.print(autotrain_runs_table(runs))


def _forced_autotrain_patiently(settings: Settings) -> Any:
    """The forced training of `serve-api`: without PREFECT_API_URL or a `fragua server start` server its
    flow starts a temporary Prefect server, which gets time to come up on a loaded machine."""
    from fragua.flows.autotrain import forced_autotrain
    from fragua.integrations.prefect_server import command_prefect_api

    with command_prefect_api():
        return forced_autotrain(settings)


def serve_api(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, help="Bind address (default intake.api_host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default intake.api_port; 0 picks a free one)."),
) -> None:
    """Serve the intake HTTP API (docs at /docs); needs intake.api_token."""
    import uvicorn

    from fragua.intake.api import create_app
    from fragua.intake.queue import IntakeError, QueueUnavailable

    settings = load_settings(ctx)
    try:
        app_ = create_app(settings, _forced_autotrain_patiently)
    except (IntakeError, QueueUnavailable) as exc:
        raise_user(str(exc))
    with exit_on_sigterm():
        uvicorn.run(app_, host=host or settings.intake.api_host, port=settings.intake.api_port if port is None else port, log_level="info")
