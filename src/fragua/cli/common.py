"""What every command shares: the console, settings from the global options, and turning user errors into one clear message."""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from fragua.settings import Settings, describe_validation_error, parse_overrides

console = Console()

SOURCE_OPTION = typer.Option(None, "--source", help="Input file or folder (repeatable); replaces data.sources.")
VERSION_OPTION = typer.Option(None, "--version", help="A published version, e.g. fragua-tiny-v2.")
ALIAS_OPTION = typer.Option(None, "--alias", help="The version an alias points to (default: production).")
PATH_OPTION = typer.Option(None, "--path", help="A local model folder (adapter or merged model, detected).")


def _user_errors() -> tuple[type[BaseException], ...]:
    from fragua.data.ingest import IngestError
    from fragua.intake.queue import QueueUnavailable
    from fragua.integrations.prefect_server import PrefectServerError
    from fragua.models.loading import ModelLoadError
    from fragua.models.templates import TemplateError
    from fragua.registry.export import ExportError
    from fragua.registry.versions import RegistryError
    from fragua.storage.store import StoreError
    from fragua.validate.benchmarks import BenchmarkError

    return (IngestError, RegistryError, ModelLoadError, StoreError, TemplateError, ExportError, PrefectServerError, FileNotFoundError,
            QueueUnavailable, BenchmarkError)


def load_settings(ctx: typer.Context, sources: list[Path] | None = None) -> Settings:
    """Settings from profile, file, environment and flags; invalid ones stop here, before any work."""
    options = ctx.obj
    try:
        overrides: dict[str, Any] = parse_overrides(options["overrides"])
        if options["work_dir"]:
            overrides["work_dir"] = str(options["work_dir"])
        if sources:
            overrides.setdefault("data", {})["sources"] = [{"path": str(p)} for p in sources]
        return Settings.load(profile=options["profile"], settings_file=options["settings_file"], **overrides)
    except ValidationError as exc:
        # escaped: the "[set it with …]" hint would otherwise be swallowed as a rich markup tag
        console.print(f"[red]error:[/red] {escape(describe_validation_error(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc


class _HideUserErrorTracebacks(logging.Filter):
    """Prefect logs every failed run with its traceback; for errors we explain ourselves the
    message is enough on the console (the API log handler, which runs first, keeps it all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _user_errors()):
            record.exc_info = None
            record.exc_text = None
        return True


def _install_console_filter() -> None:
    # Only a command that has imported Prefect has its console handler (and runs flows that log
    # failures); importing it here would cost every other command a second.
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _HideUserErrorTracebacks) for f in handler.filters):
            handler.addFilter(_HideUserErrorTracebacks())


def run_step(action: Callable[[], Any]) -> Any:
    """Run a flow; user-facing failures print one clear message instead of a traceback."""
    _install_console_filter()
    try:
        return action()
    except _user_errors() as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc


def run_flow(action: Callable[[], Any]) -> Any:
    """run_step for what talks to the Prefect API (flows, blocks): PREFECT_API_URL, else the server
    `fragua server start` left running, else a temporary server, which gets time to come up on a loaded machine."""
    from fragua.integrations.prefect_server import command_prefect_api

    def against_the_api() -> Any:
        with command_prefect_api():
            return action()

    return run_step(against_the_api)


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM inside the block ends the command like ``sys.exit(143)``: through the entrypoint's
    normal exit, whose atexit hooks drain Prefect's log workers and then stop the temporary
    Prefect server a flow started in this process. (uvicorn stops gracefully on SIGTERM and then
    raises it again for the handler it replaced; Python's default one ends the process at once,
    which left that server, a 330 MB process, running.)"""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_user(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def choose_model(settings: Settings, version: str | None, alias: str | None, path: Path | None) -> Any:
    """The model --version, --alias or --path names (default: production); a bad choice is a user error."""
    from fragua.inference.choice import resolve_model

    try:
        return run_step(lambda: resolve_model(settings, version=version, alias=alias, path=path))
    except ValueError as exc:
        raise_user(str(exc))
