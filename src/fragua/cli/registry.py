"""Model registry commands: `deploy` (optionally as a canary), `promote`, `rollback`, `versions`, `history`, `export`, and the `registry` group (gc)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fragua.cli.common import console, load_settings, raise_user, run_flow, run_step
from fragua.cli.render import history_table, kv_table, versions_table


def _check_version_name(version: str | None) -> None:
    """A name that could escape the registry ('..', '/') is refused in one line, before any flow runs."""
    from fragua.settings import check_name

    if version is not None:
        try:
            check_name(version, "version")
        except ValueError as exc:
            raise_user(str(exc))


def deploy(
    ctx: typer.Context,
    run: Optional[str] = typer.Option(None, help="Validated training run to publish (default: the newest)."),
    version: Optional[str] = typer.Option(None, help="Promote this already published version instead."),
    canary: Optional[float] = typer.Option(
        None, "--canary", metavar="PERCENT",
        help="Deploy as the canary with this share (0-100, exclusive) of production's requests instead of moving production; `fragua promote` or the canary flow promotes it.",
    ),
) -> None:
    """Publish a validated run as a version and move production to it (registry.auto_deploy), or make it the canary (--canary)."""
    from fragua.flows.deploy import deploy_flow
    from fragua.registry.canary import check_percent
    from fragua.registry.versions import RegistryError

    settings = load_settings(ctx)
    _check_version_name(version)
    if canary is not None:
        try:
            check_percent(canary)
        except RegistryError as exc:
            raise_user(f"--canary: {exc}")
    outcome = run_flow(lambda: deploy_flow(settings, run, version, canary))
    rows = [("version", outcome.version or "-"), ("published", outcome.published), ("promoted", outcome.promoted), ("production", outcome.production or "-")]
    if outcome.canary:
        rows.append(("canary", f"{outcome.canary} ({outcome.canary_percent:g}% of production's requests)"))
    console.print(kv_table("Deploy", [*rows, ("report", outcome.report_path or "-")]))


def promote(ctx: typer.Context) -> None:
    """Move production to the running canary (previous keeps what production was) and end the canary."""
    from fragua.flows.canary import promote_flow
    from fragua.registry import open_registry
    from fragua.registry.canary import CANARY

    settings = load_settings(ctx)
    registry = open_registry(settings)
    canary, _ = run_step(lambda: registry.alias(CANARY))
    if canary is None:
        production = run_step(registry.production)
        raise_user(f"no canary to promote; production stays {production.version if production else 'unset'} (start one with `fragua deploy --canary PERCENT`)")
    state = run_flow(lambda: promote_flow(settings))
    console.print(f"production: {state.previous} -> [bold]{state.version}[/bold]; the canary ended", highlight=False)


def rollback(ctx: typer.Context, to: Optional[str] = typer.Option(None, "--to", help="Version to roll back to (default: previous).")) -> None:
    """Point production back to the previous version (or --to VERSION). Only the alias moves. During a canary, without --to, end the canary."""
    from fragua.flows.deploy import rollback_flow

    settings = load_settings(ctx)
    _check_version_name(to)
    outcome = run_flow(lambda: rollback_flow(settings, to))
    production = outcome.production
    if outcome.moved:
        console.print(f"production: {production.previous} -> [bold]{production.version}[/bold]", highlight=False)
    if outcome.canary_ended:
        stays = "" if outcome.moved else f"; production unchanged: {production.version if production else 'unset'}"
        console.print(f"canary {outcome.canary_ended} ended{stays}", highlight=False)


def versions(ctx: typer.Context) -> None:
    """List published versions, their metrics, aliases and report paths."""
    from fragua.registry import open_registry, version_file

    settings = load_settings(ctx)
    registry = open_registry(settings)
    manifests = run_step(registry.versions)
    aliases = run_step(registry.aliases)
    console.print(versions_table(f"Versions in {registry.describe()}", manifests, aliases))
    for manifest in manifests:
        console.print(f"report of {manifest.version}: {version_file(settings, manifest.version, 'report.md')}", highlight=False, soft_wrap=True)
    production = aliases.get("production")
    console.print(f"production -> {production.version if production else 'none'}", highlight=False)


def history(ctx: typer.Context) -> None:
    """Every alias move (deploys and rollbacks), oldest first."""
    from fragua.registry import open_registry

    settings = load_settings(ctx)
    console.print(history_table(run_step(open_registry(settings).history)))


def export(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Version to export, e.g. fragua-tiny-v2."),
    output: Path = typer.Option(Path("exports"), "--output", "-o", help="Folder to write into (the export lands in OUTPUT/VERSION or OUTPUT/VERSION-merged)."),
    merged: bool = typer.Option(False, "--merged", help="Merge the adapter into its base model (peft merge_and_unload) and save safetensors."),
    gguf: bool = typer.Option(False, "--gguf", help="Also write a GGUF file for Ollama/llama.cpp (implies --merged; needs llama.cpp's converter)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF tensor type: f32, f16, bf16, q8_0 or auto."),
    converter: Optional[Path] = typer.Option(None, "--converter", help="Path of llama.cpp's convert_hf_to_gguf.py.", envvar="GGUF_CONVERTER"),
    overwrite: bool = typer.Option(
        False, "--overwrite",
        help="Replace a previous Fragua export of this version (only the files it wrote; your own files next to them stay). Other folders are never replaced.",
    ),
) -> None:
    """Write a verified copy of a version: as stored, merged into its base (safetensors), or GGUF."""
    from fragua.jobs.registry import export_version

    settings = load_settings(ctx)
    outcome = run_step(lambda: export_version(
        settings, version, output, merged=merged or gguf, gguf=gguf, converter=converter, gguf_type=gguf_type, overwrite=overwrite
    ))
    rows = [("model", outcome.folder), ("merged", outcome.merged), ("gguf", outcome.gguf or "-")]
    rows.append(("load with", f"AutoModelForCausalLM.from_pretrained({outcome.folder!r})" if outcome.merged else f"see {outcome.folder}/README.md"))
    console.print(kv_table(f"Export of {version}", rows))


registry_app = typer.Typer(help="Maintenance of the model registry.", no_args_is_help=True)


@registry_app.command("gc")
def registry_gc(
    ctx: typer.Context,
    keep_last: Optional[int] = typer.Option(None, "--keep-last", min=1, help="Also delete all but the newest N versions (default: registry.keep_last); aliased versions are always kept."),
    grace_minutes: Optional[float] = typer.Option(None, "--grace-minutes", min=0, help="Unfinished versions younger than this are left alone (default: registry.gc_grace_minutes)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
) -> None:
    """Delete unfinished versions (no manifest) and, with retention, old unaliased versions."""
    from fragua.jobs.registry import clean_registry
    from fragua.registry import open_registry

    settings = load_settings(ctx)
    report = run_step(lambda: clean_registry(settings, keep_last=keep_last, grace_minutes=grace_minutes, dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    console.print(
        kv_table(
            f"Registry gc of {open_registry(settings).describe()}" + (" (dry run)" if dry_run else ""),
            [
                (f"unfinished, {verb}", ", ".join(report.unfinished) or "-"),
                (f"expired, {verb}", ", ".join(report.expired) or "-"),
                ("kept: an alias points to them", ", ".join(report.kept_for_alias) or "-"),
                ("unfinished but recent (maybe uploading)", ", ".join(report.too_recent) or "-"),
                ("objects deleted", report.deleted_objects),
                ("stale multipart uploads aborted", report.aborted_uploads),
                (f"killed downloads' staging folders, {verb}", ", ".join(report.stale_downloads) or "-"),
            ],
        )
    )
