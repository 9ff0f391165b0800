"""Dataset commands: `ingest`, `expand`, and the `datasets` group (list, show, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fragua.cli.common import SOURCE_OPTION, console, load_settings, raise_user, run_flow, run_step
from fragua.cli.render import datasets_table, print_dataset, print_expansion


def ingest(ctx: typer.Context, source: Optional[list[Path]] = SOURCE_OPTION) -> None:
    """Ingest data.sources (or --source) into a new dataset version."""
    from fragua.flows.ingest import ingest_flow

    settings = load_settings(ctx, source)
    manifest = run_flow(lambda: ingest_flow(settings))
    print_dataset(manifest)


def expand(ctx: typer.Context, dataset: Optional[str] = typer.Option(None, help="Dataset id (default: ingest the sources).")) -> None:
    """Augment a dataset version's train split toward expand.expansion_factor."""
    from fragua.flows.expand import expand_flow

    settings = load_settings(ctx)
    manifest = run_flow(lambda: expand_flow(settings, dataset))
    print_dataset(manifest)
    print_expansion(manifest)


datasets_app = typer.Typer(help="Dataset versions: list them, show one, export a split or domain.", no_args_is_help=True)


@datasets_app.command("list")
def datasets_list(ctx: typer.Context) -> None:
    """Dataset versions under the work directory, oldest first."""
    from fragua.data.store import open_dataset_store

    store = open_dataset_store(load_settings(ctx))
    console.print(datasets_table(f"Dataset versions in {store.describe()}", (store.manifest(ident) for ident in run_step(store.ids))))


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset: Optional[str] = typer.Argument(None, help="Dataset id or prefix (default: the newest).")) -> None:
    """Counts per domain, split and source, quarantine reasons and files of a dataset version."""
    from fragua.data.store import open_dataset_store

    store = open_dataset_store(load_settings(ctx))
    print_dataset(run_step(lambda: store.find(dataset)))


@datasets_app.command("export")
def datasets_export(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file to write the records to."),
    dataset: Optional[str] = typer.Argument(None, help="Dataset id or prefix (default: the newest)."),
    split: str = typer.Option("train", help="train, validation or test."),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="Only this domain (repeatable): the per-domain view."),
) -> None:
    """Write one split of a dataset version, optionally one domain's rows only, as canonical JSONL records."""
    from fragua.data.store import load_records, open_dataset_store

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
