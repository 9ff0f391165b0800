"""How the commands show their results: rich tables of datasets, expansions, metrics, versions and runs, and the training progress bar."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from rich.table import Table

from fragua.cli.common import console


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(column, overflow="fold", justify="right" if isinstance(rows[0][column], (int, float)) else "left")
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    return table


def _short_path(path: str) -> str:
    """A source path relative to the working directory, or its last two parts."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        parts = Path(path).parts
        return path if len(parts) <= 3 or path.startswith("hf:") else str(Path("…", *parts[-2:]))


def print_dataset(manifest: Any) -> None:
    """The dataset version: domains per split (with length percentiles), sources, reasons, files."""
    from fragua.data.store import load_stats
    from fragua.reports.dataset import dataset_rows

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
        console.print(kv_table("Quarantined rows by reason", list(manifest.rejected.items())))
    facts = [("path", manifest.path), ("quarantine file", manifest.quarantine_file or "-")]
    if manifest.plot_file:
        facts += [("statistics", manifest.stats_file), ("plot", manifest.plot_file)]
    if stats:
        facts.append(("lengths in", stats["length_unit"]))
    console.print(kv_table("Files", facts))
    for warning in manifest.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def print_expansion(manifest: Any) -> None:
    """Before/after counts per strategy and domain, the leakage guard, an example of each strategy."""
    from fragua.reports.expansion import domain_rows, example_rows, strategy_rows

    report = manifest.report.get("expansion")
    if not report:
        console.print("not expanded: expand.expansion_factor is 1.0 (e.g. --set expand.expansion_factor=2)")
        return
    console.print(rows_table(f"Expansion of {manifest.parent}: train {report['train_before']} -> {report['train_after']}, "
                             f"factor {report['achieved_factor']} of {report['target_factor']}", strategy_rows(report)))
    console.print(rows_table("Train rows per domain", domain_rows(report)))
    if examples := example_rows(report):
        console.print(rows_table("Examples", examples))
    leakage = report["leakage"]
    console.print(kv_table("Held-out guard", [
        ("validation/test records", leakage["held_out_records"]), ("train rows not expanded", leakage["train_rows_not_expanded"]),
        ("generated rows rejected as leaks", leakage["rejected"]), ("generator", report["generator"] or "-"),
    ]))
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def datasets_table(title: str, manifests: Iterable[Any]) -> Table:
    """One row per dataset version: id, creation time, counts per split, domains, quarantined rows, parent."""
    table = Table(title=title, title_justify="left")
    for column in ("id", "created", "records", "domains", "quarantined", "parent"):
        table.add_column(column, overflow="fold")
    for manifest in manifests:
        table.add_row(manifest.id, manifest.created_at[:19], str(manifest.counts), ", ".join(manifest.domains), str(manifest.quarantined), manifest.parent or "-")
    return table


def trials_table(dataset_id: str, trials: list[Any]) -> Table:
    """One row per hyperparameter trial: its values, status and validation loss."""
    from fragua.train.hpo import trial_rows

    table = Table(title=f"Trials on dataset {dataset_id}", title_justify="left")
    rows = trial_rows(trials)
    for column in ("trial", "learning_rate", "r", "alpha", "epochs", "status", "eval_loss", "run_id"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if c == "eval_loss" and row[c] is not None else str(row[c]) for c in
                        ("trial", "learning_rate", "r", "alpha", "epochs", "status", "eval_loss", "run_id")))
    return table


def print_validation(passed: bool, reasons: list[str], report_path: str | None) -> None:
    colour = "green" if passed else "red"
    console.print(f"[{colour}]validation {'passed' if passed else 'failed'}[/{colour}]")
    for reason in reasons:
        console.print(f"  {reason}", highlight=False)
    if report_path:
        console.print(f"  report: {report_path}", highlight=False)


def metrics_table(title: str, overall: Any, per_domain: dict[str, Any]) -> Table:
    """One row per metric, one column per domain: narrow enough for any terminal."""
    from fragua.validate.scoring import SCORE_METRICS

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


def versions_table(title: str, manifests: list[Any], aliases: dict[str, Any]) -> Table:
    """One row per published version: the aliases on it, creation time, primary metric, validation loss, dataset."""
    by_version: dict[str, list[str]] = {}
    for name, state in aliases.items():
        by_version.setdefault(state.version, []).append(name)
    table = Table(title=title, title_justify="left")
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
    return table


def history_table(events: list[Any]) -> Table:
    """Every alias move: when, which alias, from and to which version, why and by whom."""
    table = Table(title="Alias history", title_justify="left")
    for column in ("at", "alias", "from", "to", "reason", "actor"):
        table.add_column(column)
    for event in events:
        to = event.to_version or "(removed)"
        if event.traffic_percent:
            to = f"{to} ({event.traffic_percent:g}%)"
        table.add_row(event.at[:19], event.alias, event.from_version or "-", to, event.reason, event.actor or "-")
    return table


def served_table(stats: list[Any]) -> Table:
    """What each version served (the serving log): requests, error rate, latency, ratings."""
    table = Table(title="Served by version", title_justify="left")
    for column in ("version", "requests", "error rate", "p50 ms", "p95 ms", "ratings", "mean rating"):
        table.add_column(column, justify="left" if column == "version" else "right")
    for item in stats:
        table.add_row(
            item.version, str(item.requests), f"{item.error_rate:.2%}",
            "-" if item.latency_p50_ms is None else f"{item.latency_p50_ms:.0f}", "-" if item.latency_p95_ms is None else f"{item.latency_p95_ms:.0f}",
            str(item.ratings), "-" if item.mean_rating is None else f"{item.mean_rating:+.2f}",
        )
    return table


def autotrain_runs_table(runs: list[Any]) -> Table:
    """The intake queue's recent autotrain runs, newest first."""
    table = Table(title="Recent autotrain runs", title_justify="left")
    for column in ("started", "run", "state", "examples", "version", "message"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(run.started_at[:19], run.id, run.state, str(run.examples), run.version or "-", run.message or "")
    return table


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
