"""The ``fragua`` command line: each command runs the matching Prefect flow and prints a summary."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .settings import Settings, SourceSpec, describe_validation_error, parse_overrides

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
    from .export import ExportError
    from .ingest import IngestError
    from .modeling import ModelLoadError
    from .registry import RegistryError
    from .storage import StoreError

    return (UserError, IngestError, RegistryError, ModelLoadError, StoreError, TemplateError, ExportError, FileNotFoundError)


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


def _short_path(path: str) -> str:
    """A source path relative to the working directory, or its last two parts."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        parts = Path(path).parts
        return path if len(parts) <= 3 or path.startswith("hf:") else str(Path("…", *parts[-2:]))


def _print_dataset(manifest: Any) -> None:
    """The dataset version: domains per split (with length percentiles), sources, reasons, files."""
    from .dataset_store import load_stats
    from .report import dataset_rows

    stats = load_stats(manifest)
    rows = dataset_rows(manifest, stats)
    domains = Table(title=f"Dataset {manifest.id}: {sum(manifest.counts.values())} records", title_justify="left")
    for column in rows[0] if rows else ["domain"]:
        domains.add_column(column, justify="left" if column == "domain" else "right")
    for row in rows:
        domains.add_row(*[str(v) for v in row.values()])
    console.print(domains)
    sources = Table(title="Sources: rows = kept + duplicates + quarantined", title_justify="left")
    for column in ("source", "format", "rows", "kept", "duplicates", "quarantined"):
        sources.add_column(column, overflow="fold", justify="left" if column in ("source", "format") else "right")
    for source in manifest.sources:
        sources.add_row(_short_path(source.path), source.format, str(source.rows), str(source.kept), str(source.duplicates), str(source.quarantined))
    console.print(sources)
    if manifest.rejected:
        console.print(_kv_table("Quarantined rows by reason", list(manifest.rejected.items())))
    facts = [("path", manifest.path), ("quarantine file", manifest.quarantine_file or "-")]
    if manifest.plot_file:
        facts += [("statistics", manifest.stats_file), ("plot", manifest.plot_file)]
    if stats:
        facts.append(("lengths in", stats["length_unit"]))
    console.print(_kv_table("Files", facts))
    for warning in manifest.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@app.command()
def expand(ctx: typer.Context, dataset: Optional[str] = typer.Option(None, help="Dataset id (default: ingest the sources).")) -> None:
    """Augment a dataset version's train split toward expand.expansion_factor."""
    from flows.ingest import expand_flow

    settings = load_settings(ctx)
    manifest = run_step(lambda: expand_flow(settings, dataset))
    _print_dataset(manifest)
    _print_expansion(manifest)


def _rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(column, overflow="fold", justify="right" if isinstance(rows[0][column], (int, float)) else "left")
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    return table


def _print_expansion(manifest: Any) -> None:
    """Before/after counts per strategy and domain, the leakage guard, an example of each strategy."""
    from .expand_report import domain_rows, example_rows, strategy_rows

    report = manifest.report.get("expansion")
    if not report:
        console.print("not expanded: expand.expansion_factor is 1.0 (e.g. --set expand.expansion_factor=2)")
        return
    console.print(_rows_table(f"Expansion of {manifest.parent}: train {report['train_before']} -> {report['train_after']}, "
                              f"factor {report['achieved_factor']} of {report['target_factor']}", strategy_rows(report)))
    console.print(_rows_table("Train rows per domain", domain_rows(report)))
    if examples := example_rows(report):
        console.print(_rows_table("Examples", examples))
    leakage = report["leakage"]
    console.print(_kv_table("Held-out guard", [
        ("validation/test records", leakage["held_out_records"]), ("train rows not expanded", leakage["train_rows_not_expanded"]),
        ("generated rows rejected as leaks", leakage["rejected"]), ("generator", report["generator"] or "-"),
    ]))
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


@app.command()
def train(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, help="Dataset id or prefix (default: ingest the sources)."),
    source: Optional[list[Path]] = SOURCE_OPTION,
    queue: bool = typer.Option(False, "--queue", help="Force a training on the intake queue now (same as `fragua autotrain --force`)."),
) -> None:
    """Fine-tune the base model on a dataset version (or, with --queue, on the intake queue's pending examples)."""
    from flows.train import train_flow

    if queue:
        if dataset or source:
            raise_user("--queue trains on the intake queue; it takes no --dataset or --source")
        _autotrain(ctx, force=True, deployment=False)
        return
    settings = load_settings(ctx, source)
    with training_progress_bar():
        report = run_step(lambda: train_flow(settings, dataset))
    console.print(
        _kv_table(
            f"Training run {report.run_id}",
            [("steps", f"{report.global_step} of {report.max_steps}" + (" (stopped early)" if report.stopped_early else "")),
             ("train loss", report.train_loss), ("validation loss", report.eval_loss),
             ("tokens/s", report.tokens_per_second or "-"), ("batching", report.batching),
             ("resumed from", report.resumed_from or "-"), ("continued version", report.parent_version or "-"),
             ("model", report.adapter_dir), ("tracking", report.tracking_run or "disabled")],
        )
    )


class _ProgressBarHandler(logging.Handler):
    """Moves a rich progress bar with the training's progress log records."""

    def __init__(self, progress: Any) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.task: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "progress", None)
        if not event:
            return
        if self.task is None or event["step"] < self.progress.tasks[-1].completed:
            # First event, or a new run began (the next trial of a hyperparameter search).
            self.task = self.progress.add_task("training", total=event["max_steps"])
        description = f"loss {event['loss']:.4f}  {event.get('tokens_per_second') or '-'} tok/s"
        self.progress.update(self.task, completed=event["step"], total=event["max_steps"], description=description)


@contextmanager
def training_progress_bar() -> Iterator[None]:
    """A progress bar (steps, loss, tokens/s, time left) while a command trains."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    train_logger = logging.getLogger("fragua.train")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        handler = _ProgressBarHandler(progress)
        level = train_logger.level
        train_logger.addHandler(handler)
        train_logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            train_logger.removeHandler(handler)
            train_logger.setLevel(level)


@app.command()
def hpo(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, help="Dataset id or prefix (default: ingest the sources)."),
    source: Optional[list[Path]] = SOURCE_OPTION,
) -> None:
    """Search learning rate, LoRA rank/alpha and epochs (settings section hpo); pick the lowest validation loss."""
    from flows.hpo import hpo_flow

    from .hpo import trial_rows

    settings = load_settings(ctx, source)
    with training_progress_bar():
        result = run_step(lambda: hpo_flow(settings, dataset))
    table = Table(title=f"Trials on dataset {result.dataset_id}", title_justify="left")
    rows = trial_rows(result.trials)
    for column in ("trial", "learning_rate", "r", "alpha", "epochs", "status", "eval_loss", "run_id"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if c == "eval_loss" and row[c] is not None else str(row[c]) for c in
                        ("trial", "learning_rate", "r", "alpha", "epochs", "status", "eval_loss", "run_id")))
    console.print(table)
    if result.best:
        console.print(f"best: trial {result.best.trial.number}, run {result.best.run_id} (validation loss {result.best.eval_loss:.4f}); "
                      f"next: fragua validate --run {result.best.run_id}", highlight=False)
    else:
        console.print("[red]no trial produced a validation loss[/red]")
    console.print(f"results: {result.report_path}", highlight=False)


@app.command("lora-config")
def lora_config(
    model: str = typer.Argument(..., help="Hub id, local folder or .gguf file of the base model."),
    task: str = typer.Option("qa", help="qa, chat, classification or domain."),
    parameters: Optional[float] = typer.Option(None, help="Parameter count (e.g. 7e9) instead of reading the model's config."),
) -> None:
    """Print a recommended LoRA configuration (TOML for a settings file) for MODEL and --task."""
    from .lora_config import TASKS, count_parameters, recommend_lora

    if task not in TASKS:
        raise_user(f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}")
    count = int(parameters) if parameters else run_step(lambda: count_parameters(model))
    typer.echo(recommend_lora(count, task).toml(), nl=False)  # plain: the TOML must not be wrapped


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
        table.add_row(event.at[:19], event.alias, event.from_version or "-", event.to_version or "(removed)", event.reason, event.actor or "-")
    console.print(table)


datasets_app = typer.Typer(help="Dataset versions: list them, show one, export a split or domain.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("list")
def datasets_list(ctx: typer.Context) -> None:
    """Dataset versions under the work directory, oldest first."""
    from .jobs import open_dataset_store

    store = open_dataset_store(load_settings(ctx))
    table = Table(title=f"Dataset versions in {store.describe()}", title_justify="left")
    for column in ("id", "created", "records", "domains", "quarantined", "parent"):
        table.add_column(column, overflow="fold")
    for ident in run_step(store.ids):
        manifest = store.manifest(ident)
        table.add_row(manifest.id, manifest.created_at[:19], str(manifest.counts), ", ".join(manifest.domains), str(manifest.quarantined), manifest.parent or "-")
    console.print(table)


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset: Optional[str] = typer.Argument(None, help="Dataset id or prefix (default: the newest).")) -> None:
    """Counts per domain, split and source, quarantine reasons and files of a dataset version."""
    from .jobs import open_dataset_store

    store = open_dataset_store(load_settings(ctx))
    _print_dataset(run_step(lambda: store.find(dataset)))


@datasets_app.command("export")
def datasets_export(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file to write the records to."),
    dataset: Optional[str] = typer.Argument(None, help="Dataset id or prefix (default: the newest)."),
    split: str = typer.Option("train", help="train, validation or test."),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="Only this domain (repeatable): the per-domain view."),
) -> None:
    """Write one split of a dataset version, optionally one domain's rows only, as canonical JSONL records."""
    from .dataset_store import load_records
    from .jobs import open_dataset_store

    if split not in ("train", "validation", "test"):
        raise_user(f"--split must be train, validation or test, not {split!r}")
    store = open_dataset_store(load_settings(ctx))
    manifest = run_step(lambda: store.find(dataset))
    try:
        records = load_records(manifest, split, domain or None)
    except ValueError as exc:
        raise_user(str(exc))
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.model_dump_json() + "\n")
    console.print(f"{len(records)} {split} records of {manifest.id}{' in ' + ', '.join(domain) if domain else ''} -> {output}", highlight=False)


registry_app = typer.Typer(help="Maintenance of the model registry.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("gc")
def registry_gc(
    ctx: typer.Context,
    keep_last: Optional[int] = typer.Option(None, "--keep-last", min=1, help="Also delete all but the newest N versions (default: registry.keep_last); aliased versions are always kept."),
    grace_minutes: Optional[float] = typer.Option(None, "--grace-minutes", min=0, help="Unfinished versions younger than this are left alone (default: registry.gc_grace_minutes)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
) -> None:
    """Delete unfinished versions (no manifest) and, with retention, old unaliased versions."""
    from .jobs import clean_registry, open_registry

    settings = load_settings(ctx)
    report = run_step(lambda: clean_registry(settings, keep_last=keep_last, grace_minutes=grace_minutes, dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    console.print(
        _kv_table(
            f"Registry gc of {open_registry(settings).describe()}" + (" (dry run)" if dry_run else ""),
            [
                (f"unfinished, {verb}", ", ".join(report.unfinished) or "-"),
                (f"expired, {verb}", ", ".join(report.expired) or "-"),
                ("kept: an alias points to them", ", ".join(report.kept_for_alias) or "-"),
                ("unfinished but recent (maybe uploading)", ", ".join(report.too_recent) or "-"),
                ("objects deleted", report.deleted_objects),
                ("stale multipart uploads aborted", report.aborted_uploads),
            ],
        )
    )


@app.command()
def export(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Version to export, e.g. fragua-tiny-v2."),
    output: Path = typer.Option(Path("exports"), "--output", "-o", help="Folder to write into."),
    merged: bool = typer.Option(False, "--merged", help="Merge the adapter into its base model (peft merge_and_unload) and save safetensors."),
    gguf: bool = typer.Option(False, "--gguf", help="Also write a GGUF file for Ollama/llama.cpp (implies --merged; needs llama.cpp's converter)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF tensor type: f32, f16, bf16, q8_0 or auto."),
    converter: Optional[Path] = typer.Option(None, "--converter", help="Path of llama.cpp's convert_hf_to_gguf.py.", envvar="GGUF_CONVERTER"),
) -> None:
    """Write a verified copy of a version: as stored, merged into its base (safetensors), or GGUF."""
    from .jobs import export_version

    settings = load_settings(ctx)
    outcome = run_step(lambda: export_version(settings, version, output, merged=merged or gguf, gguf=gguf, converter=converter, gguf_type=gguf_type))
    rows = [("model", outcome.folder), ("merged", outcome.merged), ("gguf", outcome.gguf or "-")]
    rows.append(("load with", f"AutoModelForCausalLM.from_pretrained({outcome.folder!r})" if outcome.merged else f"see {outcome.folder}/README.md"))
    console.print(_kv_table(f"Export of {version}", rows))


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


@blocks_app.command("save-s3-credentials")
def save_s3_credentials_command(
    name: str = typer.Option("fragua-registry", help="Block name."),
    kind: str = typer.Option("aws", help="'aws' (AwsCredentials: AWS, R2, most services) or 'minio' (MinIOCredentials)."),
    region: Optional[str] = typer.Option(None, help="Region stored in the block (R2: auto, MinIO: us-east-1)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3 endpoint stored in the block, for MinIO, R2, etc."),
) -> None:
    """Store S3 credentials (from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or typed at a prompt) as a prefect-aws block."""
    from blocks import save_s3_credentials

    key_id = os.environ.get("AWS_ACCESS_KEY_ID") or typer.prompt("S3 access key id")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or typer.prompt("S3 secret access key", hide_input=True)
    slug = run_step(lambda: save_s3_credentials(key_id, secret, name, kind=kind, region=region, endpoint_url=endpoint_url))
    console.print(f"saved {slug}; use it with FRAGUA_REGISTRY__CREDENTIALS_BLOCK={slug}", highlight=False)


@blocks_app.command("register")
def blocks_register() -> None:
    """Register the block types Fragua uses (prefect-aws S3/credentials, Secret, webhook) with the Prefect API."""
    from blocks import register_block_types

    names = run_step(register_block_types)
    console.print(f"registered block types: {', '.join(names)}", highlight=False)


@blocks_app.command("save-webhook")
def save_webhook_command(
    url: str = typer.Argument(..., help="Where notifications are POSTed (JSON {subject, body, name})."),
    name: str = typer.Option("fragua-alerts", help="Block name."),
) -> None:
    """Store a webhook as a Prefect custom-webhook notification block for deploy, rollback and failure messages."""
    from blocks import save_webhook

    slug = run_step(lambda: save_webhook(url, name))
    console.print(f"saved {slug}; use it with FRAGUA_NOTIFICATIONS__BLOCK={slug}", highlight=False)


@blocks_app.command("save-storage")
def save_storage_command(
    bucket: str = typer.Argument(..., help="S3 bucket of the registry."),
    credentials_block: str = typer.Option(..., "--credentials-block", help="'aws-credentials/NAME' or 'minio-credentials/NAME' (see save-s3-credentials)."),
    prefix: str = typer.Option("", help="Key prefix inside the bucket (the block's bucket_folder)."),
    name: str = typer.Option("fragua-registry", help="Block name."),
) -> None:
    """Store the registry's storage connection as a prefect-aws S3Bucket block (bucket, folder, credentials)."""
    from blocks import save_storage

    slug = run_step(lambda: save_storage(bucket, credentials_block, name, prefix=prefix))
    console.print(f"saved {slug}; use it with FRAGUA_REGISTRY__BACKEND=s3 FRAGUA_REGISTRY__STORAGE_BLOCK={slug}", highlight=False)


# Intake queue -----------------------------------------------------------------------------


def _queue(settings: Settings) -> Any:
    from .intake import IntakeQueue

    return IntakeQueue.from_settings(settings)


@app.command()
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
    from .intake import IntakeError, RowError, parse_meta, question_answer_record

    settings = load_settings(ctx)
    limit = settings.intake.max_example_chars
    for label, text in (("question", question), ("answer", answer), ("--system", system or "")):
        if len(text) > limit:
            raise_user(f"{label} is {len(text)} characters, longer than intake.max_example_chars ({limit})")
    try:
        record = question_answer_record(question, answer, system=system, domain=domain, meta=parse_meta(meta))
        added = _queue(settings).add(record, key=key, origin="cli")
    except (IntakeError, RowError) as exc:
        raise_user(str(exc))
    verb = "added" if added.created else "already queued (same key)"
    console.print(f"example {added.example.id} {verb}: {added.example.status}", highlight=False)


@app.command("import-data")
def import_data(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A file or folder in any format ingest reads (JSONL, JSON, CSV, Parquet; alpaca, chat, SQuAD, ...)."),
    format: str = typer.Option("auto", "--format", help="Row format; auto detects it like ingest."),
    domain: Optional[str] = typer.Option(None, help="Domain for rows without one."),
) -> None:
    """Queue every example of FILE for autotrain; importing the same rows twice adds nothing."""
    from .intake import IntakeError
    from .intake_files import read_examples

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
    console.print(_kv_table("Import", rows))
    for reason in found.rejected[:20]:
        console.print(f"[yellow]rejected:[/yellow] {reason}", highlight=False)
    if len(found.rejected) > 20:
        console.print(f"[yellow]… and {len(found.rejected) - 20} more rejected rows[/yellow]")
    if found.rejected and not added:
        raise typer.Exit(1)


@app.command()
def status(ctx: typer.Context) -> None:
    """The intake queue (examples per status), production version and recent autotrain runs."""
    from .jobs import production_state

    settings = load_settings(ctx)
    queue = _queue(settings)
    counts = queue.counts()
    production = run_step(lambda: production_state(settings))
    console.print(_kv_table("Fragua", [
        ("production", production.version if production else "none yet"),
        ("queue", queue.describe()),
        *counts.items(),
        ("autotrain needs", f"{settings.intake.min_new_examples} pending"),
    ]))
    runs = queue.runs(10)
    if runs:
        table = Table(title="Recent autotrain runs", title_justify="left")
        for column in ("started", "run", "state", "examples", "version", "message"):
            table.add_column(column, overflow="fold")
        for run in runs:
            table.add_row(run.started_at[:19], run.id, run.state, str(run.examples), run.version or "-", run.message or "")
        console.print(table)


def _autotrain(ctx: typer.Context, force: bool, deployment: bool) -> None:
    settings = load_settings(ctx)
    if deployment:
        from .api import prefect_server_configured, start_deployment

        if not prefect_server_configured():
            raise_user("--deployment needs a Prefect server: set PREFECT_API_URL (see README, 'Prefect UI')")
        if not force:
            raise_user("--deployment starts a forced run: add --force (unforced runs come from the autotrain/hourly schedule)")
        name = settings.intake.force_deployment
        flow_run_id = run_step(lambda: start_deployment(name))
        console.print(f"started {name}: flow run {flow_run_id}; watch it in the Prefect UI (Runs)", highlight=False)
        return
    from flows.autotrain import autotrain_flow

    with training_progress_bar():
        result = run_step(lambda: autotrain_flow(settings, force=force))
    if result.state == "skipped":
        console.print(f"{result.pending} examples pending, {result.needed} needed: nothing to train", highlight=False)
        return
    colour = "green" if result.state == "trained" else "red"
    console.print(f"[{colour}]{result.state}[/{colour}]: {result.examples} examples, version {result.version or '-'}, production {result.production or '-'}", highlight=False)
    for reason in result.reasons:
        console.print(f"  {reason}", highlight=False)


@app.command()
def autotrain(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Train on what is pending now, however few (at least one)."),
    deployment: bool = typer.Option(False, "--deployment", help="Start intake.force_deployment on the Prefect server instead of training here."),
) -> None:
    """Train incrementally on the intake queue once intake.min_new_examples are pending; deployed examples become trained."""
    _autotrain(ctx, force, deployment)


@app.command("version")
def show_version(ctx: typer.Context) -> None:
    """Fragua's version and the production model version."""
    from . import __version__
    from .jobs import production_state

    settings = load_settings(ctx)
    production = run_step(lambda: production_state(settings))
    console.print(f"fragua {__version__}; production model: {production.version if production else 'none yet'}", highlight=False)


@app.command("serve-api")
def serve_api(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, help="Bind address (default intake.api_host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default intake.api_port; 0 picks a free one)."),
) -> None:
    """Serve the intake HTTP API (docs at /docs); needs intake.api_token."""
    import uvicorn

    from .api import create_app
    from .intake import IntakeError

    settings = load_settings(ctx)
    try:
        app_ = create_app(settings)
    except IntakeError as exc:
        raise_user(str(exc))
    uvicorn.run(app_, host=host or settings.intake.api_host, port=settings.intake.api_port if port is None else port, log_level="info")


if __name__ == "__main__":
    app(prog_name="fragua")
