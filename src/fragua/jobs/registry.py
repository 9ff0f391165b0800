"""Registry jobs: publish a validated run as a version, verify it, move and restore aliases, clean up, export."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from fragua.data.store import open_dataset_store
from fragua.jobs.forgetting import keep_benchmarks_as_version
from fragua.jobs.validate import keep_scores_as_version, load_validation
from fragua.models.identity import base_model_identity, locate_base
from fragua.models.loading import load_for_inference
from fragua.registry import open_registry
from fragua.registry.retention import CleanupReport, cleanup
from fragua.registry.versions import PREVIOUS, PRODUCTION, AliasState, Registry, RegistryError, VersionManifest, size_label
from fragua.reports.model_card import model_card
from fragua.settings import Settings
from fragua.storage import open_store
from fragua.storage.store import StoreError
from fragua.train.checkpoint_mirror import CheckpointMirror
from fragua.train.runs import RunFolder

logger = logging.getLogger("fragua.jobs")
SMOKE_QUESTION = "What can you help me with?"


class Promotion(BaseModel):
    """An alias move and what it replaced: enough to undo it if a later deploy step fails."""

    production: AliasState
    previous_before: str | None


class DeployOutcome(BaseModel):
    version: str | None
    published: bool
    promoted: bool
    production: str | None
    reasons: list[str]
    report_path: str | None = None
    canary: str | None = Field(None, description="The version deployed as the canary (deploy --canary), else None.")
    canary_percent: float | None = Field(None, description="The canary's share of production's requests.")


class RollbackOutcome(BaseModel):
    """A rollback: production moved back, and/or a running canary ended."""

    production: AliasState | None = Field(description="Production after the rollback.")
    moved: bool = Field(description="Whether production moved (a rollback during a canary without --to only ends the canary).")
    canary_ended: str | None = Field(None, description="The canary version the rollback ended, if one was running.")


def _allocate(settings: Settings, registry: Registry, run: RunFolder) -> str:
    size = settings.registry.size_label
    if size == "auto":
        size = size_label(run.report().base_parameters)
    return registry.allocate(size)


def allocate_version(settings: Settings, run_id: str) -> str:
    """Reserve the next version number for a run (its size label comes from the trained model)."""
    return _allocate(settings, open_registry(settings), RunFolder.find(settings.runs_path, run_id))


def publish_run(settings: Settings, run_id: str, *, flow_run_id: str | None = None, version: str | None = None) -> VersionManifest:
    """Upload the run's model, reports and card as ``version`` (allocated here when None); manifest last.

    With a ``version`` allocated beforehand, a retry after a storage failure uploads into
    the same version instead of taking a new number."""
    run = RunFolder.find(settings.runs_path, run_id)
    record = run.record()
    validation = load_validation(settings, run_id)
    if not validation.decision.passed:
        raise RegistryError(f"run {run_id} did not pass validation; not publishing:\n  " + "\n  ".join(validation.decision.reasons))
    train_report = run.report()
    dataset = open_dataset_store(settings).find(record.dataset_id)
    registry = open_registry(settings)
    production = registry.production()
    manifest_fields = {
        "metrics": {
            "overall": validation.candidate.overall.model_dump(),
            "per_domain": {d: m.model_dump() for d, m in validation.candidate.per_domain.items()},
            "base": validation.base.overall.model_dump() if validation.base else None,
            "production": validation.production.overall.model_dump() if validation.production else None,
        },
        "decision": validation.decision.model_dump(),
        "lineage": {
            "base_model": record.base_model,
            "base_model_id": base_model_identity(record.base_model),
            "method": train_report.method,
            "parent_version": production.version if production else None,
            "trained_from": train_report.parent_version,
            "incremental": train_report.incremental,
            "dataset_id": dataset.id,
            "dataset_counts": dataset.counts,
            "run_id": run_id,
            "tracking_run": train_report.tracking_run,
            "prefect_flow_run_id": flow_run_id,
            "settings": record.settings,
        },
    }
    version = version or _allocate(settings, registry, run)
    run.card_file.write_text(
        model_card(
            version=version,
            manifest_fields=manifest_fields,
            metrics=validation.candidate.overall,
            report=Path(validation.report_path).read_text(encoding="utf-8"),
        ),
        encoding="utf-8",
    )
    model_dir = Path(train_report.adapter_dir)
    files = {p.relative_to(model_dir).as_posix(): p for p in sorted(model_dir.rglob("*")) if p.is_file()}
    files.update(
        {
            "README.md": run.card_file,
            "eval.json": Path(validation.eval_path),
            "report.md": Path(validation.report_path),
            "train_report.json": run.report_file,
            # at the version's root, next to report.md, whose image links are relative
            **{Path(path).name: Path(path) for path in validation.plots.values()},
        }
    )
    manifest = registry.publish(version, files, manifest_fields)
    keep_scores_as_version(settings, run_id, manifest.version)
    keep_benchmarks_as_version(settings, run_id, manifest.version)
    _remove_mirrored_checkpoints(settings, run_id)
    return manifest


def _remove_mirrored_checkpoints(settings: Settings, run_id: str) -> None:
    """The run's checkpoints mirrored to the registry's storage only served to resume it; its model is
    now a version. A failure here leaves them for a later publish of the run and fails nothing."""
    mirror = CheckpointMirror(open_store(settings), run_id, keep=settings.train.save_total_limit)
    try:
        removed = mirror.remove_all()
    except StoreError as exc:
        logger.warning("could not remove the mirrored checkpoints of run %s from %s: %s", run_id, mirror.describe(), exc)
        return
    if removed:
        logger.info("removed %d mirrored checkpoint objects of run %s from %s", removed, run_id, mirror.describe())


def verify_version(settings: Settings, version: str) -> str:
    """Download with checksum verification, load, and generate an answer: the smoke check."""
    from fragua.data.records import Message
    from fragua.models.templates import generation_prompt, stop_token_ids

    registry = open_registry(settings)
    manifest = registry.manifest(version)
    folder = registry.fetch(version)
    loaded = load_for_inference(folder, settings.train, base_model=locate_base(manifest.lineage, settings.base_model_ref))
    prompt = generation_prompt(loaded.tokenizer, [Message(role="user", content=SMOKE_QUESTION)])
    inputs = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
    output = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=stop_token_ids(loaded.tokenizer), pad_token_id=loaded.tokenizer.pad_token_id)
    new_tokens = output.shape[1] - inputs["input_ids"].shape[1]
    if new_tokens < 1:
        raise RegistryError(f"smoke check of {version} failed: the model generated nothing")
    return loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def promote_version(settings: Settings, version: str, *, expected_production: str | None, reason: str, actor: str | None = None) -> Promotion:
    """Move production to ``version`` only if production is still what validation compared against."""
    registry = open_registry(settings)
    expected = registry.alias(PRODUCTION)
    current = expected[0].version if expected[0] else None
    if current != expected_production:
        raise RegistryError(
            f"production is now {current or 'unset'}, but {version} was validated against {expected_production or 'no production version'}; "
            "validate again before deploying"
        )
    previous, _ = registry.alias(PREVIOUS)
    state = registry.promote(version, reason=reason, actor=actor, expected=expected)
    return Promotion(production=state, previous_before=previous.version if previous else None)


def clean_registry(
    settings: Settings, *, keep_last: int | None = None, grace_minutes: float | None = None, dry_run: bool = False
) -> CleanupReport:
    """`fragua registry gc`: unfinished versions past the grace period, then retention (keep_last)."""
    grace = settings.registry.gc_grace_minutes if grace_minutes is None else grace_minutes
    return cleanup(
        open_registry(settings),
        keep_last=keep_last if keep_last is not None else settings.registry.keep_last,
        grace=timedelta(minutes=grace),
        dry_run=dry_run,
    )


class ExportOutcome(BaseModel):
    version: str
    folder: str = Field(description="The exported model: the version as stored, or merged into its base.")
    merged: bool
    gguf: str | None = None


def export_version(
    settings: Settings,
    version: str,
    output: Path,
    *,
    merged: bool,
    gguf: bool = False,
    converter: Path | None = None,
    gguf_type: str = "f16",
    overwrite: bool = False,
) -> ExportOutcome:
    """A verified copy of ``version`` under ``output``: as stored, merged (safetensors) and/or GGUF.

    What is already there is refused (checked before any work), except, with ``overwrite``, a
    previous Fragua export, of which only the files it wrote are replaced. GGUF needs a merged
    model and llama.cpp's converter; without the converter this raises ExportError naming what
    to install, after the merged model was written."""
    from fragua.registry.export import (
        INSTALL_CONVERTER, ExportError, check_file_destination, convert_to_gguf, copy_version, find_converter, merge_version,
        prepare_output, previous_export, record_gguf,
    )

    output = prepare_output(output)
    target = output / (f"{version}-merged" if merged or gguf else version)
    previous = previous_export(target, overwrite=overwrite)
    gguf_file = output / f"{version}.gguf"
    if gguf:
        check_file_destination(gguf_file, previous, overwrite=overwrite)
    registry = open_registry(settings)
    manifest = registry.manifest(version)
    local = registry.fetch(version)
    if not (merged or gguf):
        folder = copy_version(local, target, version, overwrite=overwrite)
        return ExportOutcome(version=version, folder=str(folder), merged=False)
    # The base is looked up by content: a work directory moved since training still exports.
    located = manifest.model_copy(update={"lineage": {**manifest.lineage, "base_model": locate_base(manifest.lineage, settings.base_model_ref)}})
    folder = merge_version(local, located, target, settings.train, overwrite=overwrite)
    if not gguf:
        return ExportOutcome(version=version, folder=str(folder), merged=True)
    found = find_converter(converter)
    if found is None:
        raise ExportError(f"{INSTALL_CONVERTER}\nmerged model: {folder}")
    convert_to_gguf(folder, gguf_file, found, outtype=gguf_type)
    record_gguf(folder, gguf_file)
    return ExportOutcome(version=version, folder=str(folder), merged=True, gguf=str(gguf_file))
