"""Training commands: `init-base`, `train`, `hpo`, `lora-config`, and `autotrain` on the intake queue."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fragua.cli.common import SOURCE_OPTION, console, load_settings, raise_user, run_flow, run_step
from fragua.cli.render import kv_table, training_progress_bar, trials_table
from fragua.reports.training import phase_times


def init_base(ctx: typer.Context, force: bool = typer.Option(False, "--force", help="Rebuild even if it exists.")) -> None:
    """Build the tiny local base model (tokenizer trained on the shipped corpus, random-init Llama)."""
    from fragua.models.tiny import ensure_base_model

    settings = load_settings(ctx)
    if settings.train.base_model:
        raise_user(f"train.base_model is {settings.train.base_model!r}; init-base builds only the built-in tiny model")
    path = run_step(lambda: ensure_base_model(settings, force=force))
    console.print(kv_table("Tiny base model", [("path", path), ("load with", f"AutoModelForCausalLM.from_pretrained({path!r})")]))


def train(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, help="Dataset id or prefix (default: ingest the sources)."),
    source: Optional[list[Path]] = SOURCE_OPTION,
    queue: bool = typer.Option(False, "--queue", help="Force a training on the intake queue now (same as `fragua autotrain --force`)."),
) -> None:
    """Fine-tune the base model on a dataset version (or, with --queue, on the intake queue's pending examples)."""
    from fragua.flows.train import train_flow

    if queue:
        if dataset or source:
            raise_user("--queue trains on the intake queue; it takes no --dataset or --source")
        _autotrain(ctx, force=True, deployment=False)
        return
    settings = load_settings(ctx, source)
    with training_progress_bar():
        report = run_flow(lambda: train_flow(settings, dataset))
    console.print(
        kv_table(
            f"Training run {report.run_id}",
            [("steps", f"{report.global_step} of {report.max_steps}" + (" (stopped early)" if report.stopped_early else "")),
             ("train loss", report.train_loss), ("validation loss", report.eval_loss),
             ("tokens/s", report.tokens_per_second or "-"), ("batching", report.batching),
             ("time", phase_times(report.phase_seconds) or "-"),
             ("resumed from", report.resumed_from or "-"), ("continued version", report.parent_version or "-"),
             ("model", report.adapter_dir), ("tracking", report.tracking_run or "disabled")],
        )
    )


def hpo(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, help="Dataset id or prefix (default: ingest the sources)."),
    source: Optional[list[Path]] = SOURCE_OPTION,
) -> None:
    """Search learning rate, LoRA rank/alpha and epochs (settings section hpo); pick the lowest validation loss."""
    from fragua.flows.hpo import hpo_flow

    settings = load_settings(ctx, source)
    with training_progress_bar():
        result = run_flow(lambda: hpo_flow(settings, dataset))
    console.print(trials_table(result.dataset_id, result.trials))
    if result.best:
        console.print(f"best: trial {result.best.trial.number}, run {result.best.run_id} (validation loss {result.best.eval_loss:.4f}); "
                      f"next: fragua validate --run {result.best.run_id}", highlight=False)
    else:
        console.print("[red]no trial produced a validation loss[/red]")
    console.print(f"results: {result.report_path}", highlight=False)


def lora_config(
    model: str = typer.Argument(..., help="Hub id, local folder or .gguf file of the base model."),
    task: str = typer.Option("qa", help="qa, chat, classification or domain."),
    parameters: Optional[float] = typer.Option(None, help="Parameter count (e.g. 7e9) instead of reading the model's config."),
) -> None:
    """Print a recommended LoRA configuration (TOML for a settings file) for MODEL and --task."""
    from fragua.train.lora_config import TASKS, count_parameters, recommend_lora

    if task not in TASKS:
        raise_user(f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}")
    count = int(parameters) if parameters else run_step(lambda: count_parameters(model))
    typer.echo(recommend_lora(count, task).toml(), nl=False)  # plain: the TOML must not be wrapped


def autotrain(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Train on what is pending now, however few (at least one)."),
    deployment: bool = typer.Option(False, "--deployment", help="Start intake.force_deployment on the Prefect server instead of training here."),
) -> None:
    """Train incrementally on the intake queue once intake.min_new_examples are pending; deployed examples become trained."""
    _autotrain(ctx, force, deployment)


def _autotrain(ctx: typer.Context, force: bool, deployment: bool) -> None:
    settings = load_settings(ctx)
    if deployment:
        from fragua.intake.api import prefect_server_configured, start_deployment

        if not prefect_server_configured():
            raise_user("--deployment needs a Prefect server: set PREFECT_API_URL (see README, 'Prefect UI')")
        if not force:
            raise_user("--deployment starts a forced run: add --force (unforced runs come from the autotrain/hourly schedule)")
        name = settings.intake.force_deployment
        flow_run_id = run_flow(lambda: start_deployment(name))
        console.print(f"started {name}: flow run {flow_run_id}; watch it in the Prefect UI (Runs)", highlight=False)
        return
    from fragua.flows.autotrain import autotrain_flow

    with training_progress_bar():
        result = run_flow(lambda: autotrain_flow(settings, force=force))
    if result.state in ("skipped", "nothing-new"):
        console.print(result.reasons[0] if result.reasons else f"{result.pending} examples pending, {result.needed} needed: nothing to train",
                      highlight=False)
        return
    colour = "green" if result.state == "trained" else "red"
    console.print(f"[{colour}]{result.state}[/{colour}]: {result.examples} examples, version {result.version or '-'}, production {result.production or '-'}", highlight=False)
    for reason in result.reasons:
        console.print(f"  {reason}", highlight=False)
    if result.duplicates:
        console.print(f"  {result.duplicates} claimed examples were already in production's dataset: marked duplicate, not trained again", highlight=False)
