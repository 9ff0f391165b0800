"""The ``fragua`` command line: each command runs the matching Prefect flow and prints a summary.

This module holds the app, its global options and the list of commands; each command group
lives in its own module (``data``, ``train``, ``validate``, ``registry``, ``pipeline``, ``chat``,
``intake``, ``requests``, ``serve``, ``server``, ``blocks``), with what they share in ``common`` and how they print in ``render``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from fragua.cli import blocks, chat, data, intake, pipeline, registry, requests, serve, server, train, validate

app = typer.Typer(help="Fragua: question/answer data in, validated and versioned LLM fine-tunes out.", no_args_is_help=True, pretty_exceptions_enable=False)

SETTINGS_OPTION = typer.Option(None, "--settings", "-s", help="TOML or YAML settings file.", envvar="FRAGUA_SETTINGS_FILE")
PROFILE_OPTION = typer.Option(None, "--profile", "-p", help="Shipped profile: development or production.", envvar="FRAGUA_PROFILE")
SET_OPTION = typer.Option(None, "--set", help="Override a setting: SECTION.FIELD=VALUE (repeatable; JSON values allowed).")


@app.callback()
def main(
    ctx: typer.Context,
    settings_file: Optional[Path] = SETTINGS_OPTION,
    profile: Optional[str] = PROFILE_OPTION,
    overrides: Optional[list[str]] = SET_OPTION,
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Work directory (default .fragua, or FRAGUA_WORK_DIR)."),
) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    ctx.obj = {"settings_file": settings_file, "profile": profile, "overrides": overrides or [], "work_dir": work_dir}


# Registered in this order, which is the order `fragua --help` lists them in (groups come after commands).
COMMANDS = [
    ("init-base", train.init_base),
    ("ingest", data.ingest),
    ("expand", data.expand),
    ("train", train.train),
    ("hpo", train.hpo),
    ("lora-config", train.lora_config),
    ("validate", validate.validate),
    ("deploy", registry.deploy),
    ("run", pipeline.run_pipeline),
    ("promote", registry.promote),
    ("rollback", registry.rollback),
    ("versions", registry.versions),
    ("history", registry.history),
    ("export", registry.export),
    ("eval-batch", validate.eval_batch),
    ("chat", chat.chat),
    ("add", intake.add),
    ("import-data", intake.import_data),
    ("status", intake.status),
    ("autotrain", train.autotrain),
    ("version", pipeline.show_version),
    ("serve-api", intake.serve_api),
    ("serve", serve.serve),
]
for name, command in COMMANDS:
    app.command(name)(command)
app.add_typer(data.datasets_app, name="datasets")
app.add_typer(registry.registry_app, name="registry")
app.add_typer(requests.requests_app, name="requests")
app.add_typer(blocks.blocks_app, name="blocks")
app.add_typer(server.server_app, name="server")


def entrypoint() -> None:
    """The ``fragua`` console script and ``python -m fragua.cli``.

    Once the command has finished, the clean-up Python would run at exit runs here (waiting for
    non-daemon threads, then the atexit hooks that drain Prefect's log and event workers and
    close log handlers) and the process ends with ``os._exit``. Interpreter finalization is
    skipped: with Prefect's daemon threads still alive it can tear native libraries' thread
    pools (Arrow's) down under them, and a command that had already printed its result ended
    with SIGABRT ("terminate called without an active exception") now and then on a loaded machine.
    """
    try:
        app(prog_name="fragua")
        code: object = 0
    except SystemExit as exit_:
        code = exit_.code
    # what sys.exit(code) would have made of the code: None is success, text is printed and fails
    if isinstance(code, str):
        print(code, file=sys.stderr)
    status = 0 if code is None else code if isinstance(code, int) else 1
    threading._shutdown()  # type: ignore[attr-defined]  # the interpreter's own first step at exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
