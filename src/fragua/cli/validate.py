"""Evaluation commands: `validate` (a trained run against base and production, with the gates) and `eval-batch` (a question set)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fragua.cli.common import ALIAS_OPTION, PATH_OPTION, VERSION_OPTION, choose_model, console, load_settings, run_flow, run_step
from fragua.cli.render import metrics_table, print_validation


def validate(ctx: typer.Context, run: Optional[str] = typer.Option(None, help="Training run id (default: the newest).")) -> None:
    """Evaluate a trained run against the base and production models and apply the gates."""
    from fragua.flows.validate import validate_flow

    settings = load_settings(ctx)
    outcome = run_flow(lambda: validate_flow(settings, run))
    print_validation(outcome.decision.passed, outcome.decision.reasons, outcome.report_path)


def eval_batch(
    ctx: typer.Context,
    questions_file: Path = typer.Argument(..., help="Questions: any input format ingest reads, or JSONL rows {question, answer?, choices?, domain?, id?}."),
    version: Optional[str] = VERSION_OPTION,
    alias: Optional[str] = ALIAS_OPTION,
    path: Optional[Path] = PATH_OPTION,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSON file for answers and scores (default: ./<questions>.answers.json)."),
) -> None:
    """Answer a predefined question set with one model; score the answers that have a reference."""
    from fragua.validate.batch import default_output, run_eval_batch

    settings = load_settings(ctx)
    choice = choose_model(settings, version, alias, path)
    target = output or default_output(questions_file)
    result = run_step(lambda: run_eval_batch(settings, questions_file, choice, target))
    console.print(metrics_table(f"{len(result.items)} questions answered by {choice.label}", result.overall, result.per_domain))
    console.print(f"answers and scores: {target}", highlight=False, soft_wrap=True)
