"""The ``fragua`` command line: each command runs the matching Prefect flow and prints a summary."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .settings import Settings, describe_validation_error, parse_overrides

app = typer.Typer(help="Fragua: question/answer data in, validated and versioned LLM fine-tunes out.", no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()

SETTINGS_OPTION = typer.Option(None, "--settings", "-s", help="TOML or YAML settings file.", envvar="FRAGUA_SETTINGS_FILE")
PROFILE_OPTION = typer.Option(None, "--profile", "-p", help="Shipped profile: development or production.", envvar="FRAGUA_PROFILE")
SET_OPTION = typer.Option(None, "--set", help="Override a setting: SECTION.FIELD=VALUE (repeatable; JSON values allowed).")
SOURCE_OPTION = typer.Option(None, "--source", help="Input file or folder (repeatable); replaces data.sources.")


class UserError(Exception):
    """Printed without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .chat import TemplateError
    from .ingest import IngestError
    from .modeling import ModelLoadError
    from .registry import RegistryError
    from .storage import StoreError

    return (UserError, IngestError, RegistryError, ModelLoadError, StoreError, TemplateError, FileNotFoundError)


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


def raise_user(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


@app.command("init-base")
def init_base(ctx: typer.Context, force: bool = typer.Option(False, "--force", help="Rebuild even if it exists.")) -> None:
    """Build the tiny local base model (tokenizer trained on the shipped corpus, random-init Llama)."""
    from .jobs import ensure_base_model

    settings = load_settings(ctx)
    if settings.train.base_model:
        raise_user(f"train.base_model is {settings.train.base_model!r}; init-base builds only the built-in tiny model")
    path = run_step(lambda: ensure_base_model(settings, force=force))
    console.print(_kv_table("Tiny base model", [("path", path), ("load with", f"AutoModelForCausalLM.from_pretrained({path!r})")]))


@app.command()
def ingest(ctx: typer.Context, source: Optional[list[Path]] = SOURCE_OPTION) -> None:
    """Ingest data.sources (or --source) into a new dataset version."""
    from flows.ingest import ingest_flow

    settings = load_settings(ctx, source)
    manifest = run_step(lambda: ingest_flow(settings))
    _print_dataset(manifest)


def _print_dataset(manifest: Any) -> None:
    console.print(
        _kv_table(
            f"Dataset {manifest.id}",
            [("records", manifest.counts), ("domains", manifest.domains), ("quarantined", manifest.quarantined),
             ("quarantine file", manifest.quarantine_file or "-"), ("path", manifest.path)],
        )
    )


@app.command()
def expand(ctx: typer.Context, dataset: Optional[str] = typer.Option(None, help="Dataset id (default: ingest the sources).")) -> None:
    """Augment a dataset version's train split toward expand.expansion_factor."""
    from flows.ingest import expand_flow

    settings = load_settings(ctx)
    manifest = run_step(lambda: expand_flow(settings, dataset))
    _print_dataset(manifest)


@app.command()
def train(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, help="Dataset id or prefix (default: ingest the sources)."),
    source: Optional[list[Path]] = SOURCE_OPTION,
) -> None:
    """Fine-tune the base model on a dataset version."""
    from flows.train import train_flow

    settings = load_settings(ctx, source)
    report = run_step(lambda: train_flow(settings, dataset))
    console.print(
        _kv_table(
            f"Training run {report.run_id}",
            [("steps", report.global_step), ("train loss", report.train_loss), ("validation loss", report.eval_loss),
             ("resumed from", report.resumed_from or "-"), ("model", report.adapter_dir), ("tracking", report.tracking_run or "disabled")],
        )
    )


@app.command()
def validate(ctx: typer.Context, run: Optional[str] = typer.Option(None, help="Training run id (default: the newest).")) -> None:
    """Evaluate a trained run against the base and production models and apply the gates."""
    from flows.validate import validate_flow

    settings = load_settings(ctx)
    outcome = run_step(lambda: validate_flow(settings, run))
    _print_validation(outcome.decision.passed, outcome.decision.reasons, outcome.report_path)


def _print_validation(passed: bool, reasons: list[str], report_path: str | None) -> None:
    colour = "green" if passed else "red"
    console.print(f"[{colour}]validation {'passed' if passed else 'failed'}[/{colour}]")
    for reason in reasons:
        console.print(f"  {reason}", highlight=False)
    if report_path:
        console.print(f"  report: {report_path}", highlight=False)


@app.command()
def deploy(
    ctx: typer.Context,
    run: Optional[str] = typer.Option(None, help="Validated training run to publish (default: the newest)."),
    version: Optional[str] = typer.Option(None, help="Promote this already published version instead."),
) -> None:
    """Publish a validated run as a version and move production to it (registry.auto_deploy)."""
    from flows.deploy import deploy_flow

    settings = load_settings(ctx)
    outcome = run_step(lambda: deploy_flow(settings, run, version))
    console.print(
        _kv_table("Deploy", [("version", outcome.version or "-"), ("published", outcome.published), ("promoted", outcome.promoted),
                             ("production", outcome.production or "-"), ("report", outcome.report_path or "-")])
    )


@app.command("run")
def run_pipeline(ctx: typer.Context, source: Optional[list[Path]] = SOURCE_OPTION) -> None:
    """The whole pipeline: ingest, expand, train, validate, deploy."""
    from flows.pipeline import pipeline_flow

    settings = load_settings(ctx, source)
    result = run_step(lambda: pipeline_flow(settings))
    _print_validation(result.passed, result.reasons, None)
    console.print(
        _kv_table(
            "Pipeline",
            [("dataset", result.dataset_id), ("run", result.run_id), ("version", result.version or "not published"),
             ("promoted", result.promoted), ("production", result.production or "-"), ("report", result.report_path or "-")],
        )
    )


@app.command()
def rollback(ctx: typer.Context, to: Optional[str] = typer.Option(None, "--to", help="Version to roll back to (default: previous).")) -> None:
    """Point production back to the previous version (or --to VERSION). Only the alias moves."""
    from flows.deploy import rollback_flow

    settings = load_settings(ctx)
    state = run_step(lambda: rollback_flow(settings, to))
    console.print(f"production: {state.previous} -> [bold]{state.version}[/bold]", highlight=False)


@app.command()
def versions(ctx: typer.Context) -> None:
    """List published versions, their metrics, aliases and report paths."""
    from .jobs import open_registry, version_file

    settings = load_settings(ctx)
    registry = open_registry(settings)
    manifests = run_step(registry.versions)
    aliases = run_step(registry.aliases)
    by_version: dict[str, list[str]] = {}
    for name, state in aliases.items():
        by_version.setdefault(state.version, []).append(name)
    table = Table(title=f"Versions in {registry.describe()}", title_justify="left")
    for column in ("version", "aliases", "created", "primary metric", "val loss", "dataset"):
        table.add_column(column, overflow="fold")
    for manifest in manifests:
        decision = manifest.decision
        table.add_row(
            manifest.version,
            ", ".join(sorted(by_version.get(manifest.version, []))) or "-",
            manifest.created_at[:19],
            f"{decision.get('primary_metric')}={decision.get('candidate', float('nan')):.4f}",
            f"{manifest.metrics.get('overall', {}).get('loss', float('nan')):.4f}",
            str(manifest.lineage.get("dataset_id", "-"))[:12],
        )
    console.print(table)
    for manifest in manifests:
        console.print(f"report of {manifest.version}: {version_file(settings, manifest.version, 'report.md')}", highlight=False, soft_wrap=True)
    production = aliases.get("production")
    console.print(f"production -> {production.version if production else 'none'}", highlight=False)


@app.command()
def history(ctx: typer.Context) -> None:
    """Every alias move (deploys and rollbacks), oldest first."""
    from .jobs import open_registry

    settings = load_settings(ctx)
    table = Table(title="Alias history", title_justify="left")
    for column in ("at", "alias", "from", "to", "reason", "actor"):
        table.add_column(column)
    for event in run_step(open_registry(settings).history):
        table.add_row(event.at[:19], event.alias, event.from_version or "-", event.to_version, event.reason, event.actor or "-")
    console.print(table)


VERSION_OPTION = typer.Option(None, "--version", help="A published version, e.g. fragua-tiny-v2.")
ALIAS_OPTION = typer.Option(None, "--alias", help="The version an alias points to (default: production).")
PATH_OPTION = typer.Option(None, "--path", help="A local model folder (adapter or merged model, detected).")


def _choose_model(settings: Settings, version: str | None, alias: str | None, path: Path | None) -> Any:
    from .inference import resolve_model

    try:
        return run_step(lambda: resolve_model(settings, version=version, alias=alias, path=path))
    except ValueError as exc:
        raise_user(str(exc))


def _metrics_table(title: str, overall: Any, per_domain: dict[str, Any]) -> Table:
    """One row per metric, one column per domain: narrow enough for any terminal."""
    from .evaluation import SCORE_METRICS

    groups = {"overall": overall, **per_domain}
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for domain in groups:
        table.add_column(domain, justify="right")
    for metric in ["n", "loss", "perplexity", *SCORE_METRICS]:
        values = [getattr(g, metric) for g in groups.values()]
        if all(v is None for v in values):
            continue
        table.add_row(metric, *["-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in values])
    return table


@app.command("eval-batch")
def eval_batch(
    ctx: typer.Context,
    questions_file: Path = typer.Argument(..., help="Questions: any input format ingest reads, or JSONL rows {question, answer?, choices?, domain?, id?}."),
    version: Optional[str] = VERSION_OPTION,
    alias: Optional[str] = ALIAS_OPTION,
    path: Optional[Path] = PATH_OPTION,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSON file for answers and scores (default: ./<questions>.answers.json)."),
) -> None:
    """Answer a predefined question set with one model; score the answers that have a reference."""
    from .batch_eval import default_output, run_eval_batch

    settings = load_settings(ctx)
    choice = _choose_model(settings, version, alias, path)
    target = output or default_output(questions_file)
    result = run_step(lambda: run_eval_batch(settings, questions_file, choice, target))
    console.print(_metrics_table(f"{len(result.items)} questions answered by {choice.label}", result.overall, result.per_domain))
    console.print(f"answers and scores: {target}", highlight=False, soft_wrap=True)


@app.command()
def chat(
    ctx: typer.Context,
    version: Optional[str] = VERSION_OPTION,
    alias: Optional[str] = ALIAS_OPTION,
    path: Optional[Path] = PATH_OPTION,
    sample: Optional[bool] = typer.Option(None, "--sample/--greedy", help="Sample replies, or decode greedily (chat.do_sample)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (chat.temperature)."),
    top_k: Optional[int] = typer.Option(None, help="Sample among the k most likely tokens; 0 disables (chat.top_k)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (chat.top_p)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Longest reply in tokens (chat.max_new_tokens)."),
    repetition_penalty: Optional[float] = typer.Option(None, help="Above 1 discourages repetition (chat.repetition_penalty)."),
    system: Optional[str] = typer.Option(None, help="System prompt for every conversation (chat.system_prompt)."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible sampling (chat.seed)."),
    save_dir: Path = typer.Option(Path("."), help="Where /save writes conversations without a file name."),
) -> None:
    """Talk to a version (default: production), an alias or a local model folder."""
    import json
    import sys

    from .chat_repl import Responder, chat_loop
    from .inference import load_model

    given = {"do_sample": sample, "temperature": temperature, "top_k": top_k, "top_p": top_p, "max_new_tokens": max_new_tokens,
             "repetition_penalty": repetition_penalty, "system_prompt": system, "seed": seed}
    # Appended as --set overrides so they are validated, and named, like every other setting.
    ctx.obj["overrides"] = [*ctx.obj["overrides"], *(f"chat.{key}={json.dumps(value)}" for key, value in given.items() if value is not None)]
    settings = load_settings(ctx)
    choice = _choose_model(settings, version, alias, path)
    with console.status(f"loading {choice.label}"):
        loaded = run_step(lambda: load_model(settings, choice))
    try:
        responder = Responder(loaded.model, loaded.tokenizer, settings.chat)
    except ValueError as exc:
        raise_user(str(exc))
    chat_loop(
        responder, input_stream=sys.stdin, console=console, model_label=choice.label, save_dir=save_dir,
        header={"version": choice.version, "folder": choice.folder, "device": str(loaded.model.device)},
    )


blocks_app = typer.Typer(help="Prefect blocks holding Fragua's credentials.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")


@blocks_app.command("save-wandb-key")
def save_wandb_key_command(
    name: str = typer.Option("fragua-wandb-api-key", help="Block name; set tracking.api_key_block to it."),
) -> None:
    """Store the W&B API key (from WANDB_API_KEY, or typed at a hidden prompt) as a Prefect Secret block."""
    from blocks import save_wandb_key

    api_key = os.environ.get("WANDB_API_KEY") or typer.prompt("W&B API key", hide_input=True)
    saved = run_step(lambda: save_wandb_key(api_key, name))
    console.print(f"saved Secret block {saved!r}; use it with FRAGUA_TRACKING__API_KEY_BLOCK={saved}", highlight=False)


if __name__ == "__main__":
    app(prog_name="fragua")
