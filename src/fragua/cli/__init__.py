"""The ``fragua`` command line: each command runs the matching Prefect flow and prints a summary.

This module holds the app, its global options and the list of commands; each command group
lives in its own module (``data``, ``train``, ``validate``, ``registry``, ``pipeline``, ``chat``,
``intake``, ``blocks``), with what they share in ``common`` and how they print in ``render``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from fragua.cli import blocks, chat, data, intake, pipeline, registry, train, validate

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
]
for name, command in COMMANDS:
    app.command(name)(command)
app.add_typer(data.datasets_app, name="datasets")
app.add_typer(registry.registry_app, name="registry")
app.add_typer(blocks.blocks_app, name="blocks")
