"""Whole-system commands: `run` (the pipeline, every stage in turn) and `version` (Fragua's and production's)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fragua.cli.common import SOURCE_OPTION, console, load_settings, run_flow, run_step
from fragua.cli.render import kv_table, print_validation


def run_pipeline(ctx: typer.Context, source: Optional[list[Path]] = SOURCE_OPTION) -> None:
    """The whole pipeline: ingest, expand, train, validate, deploy."""
    from fragua.flows.pipeline import pipeline_flow

    settings = load_settings(ctx, source)
    result = run_flow(lambda: pipeline_flow(settings))
    print_validation(result.passed, result.reasons, None)
    console.print(
        kv_table(
            "Pipeline",
            [("dataset", result.dataset_id), ("run", result.run_id), ("version", result.version or "not published"),
             ("promoted", result.promoted), ("production", result.production or "-"), ("report", result.report_path or "-")],
        )
    )


def show_version(ctx: typer.Context) -> None:
    """Fragua's version and the production model version."""
    from fragua import __version__
    from fragua.registry import open_registry

    settings = load_settings(ctx)
    production = run_step(lambda: open_registry(settings).production())
    console.print(f"fragua {__version__}; production model: {production.version if production else 'none yet'}", highlight=False)
