"""Garbage collection and retention: unfinished versions (no manifest) and, with keep_last, all
but the newest published versions are removed; a version an alias points to never is."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, Field

from fragua.registry.downloads import MANIFEST, remove_stale_staging
from fragua.registry.versions import Registry
from fragua.storage.store import NotFound


class CleanupReport(BaseModel):
    """What `gc` and retention removed (or, in a dry run, would remove)."""

    unfinished: list[str] = Field(default_factory=list, description="Versions without a manifest whose files were removed.")
    expired: list[str] = Field(default_factory=list, description="Published versions removed by retention (keep_last).")
    kept_for_alias: list[str] = Field(default_factory=list, description="Versions retention would drop but an alias points to.")
    too_recent: list[str] = Field(default_factory=list, description="Unfinished versions left alone: maybe still uploading.")
    aborted_uploads: int = Field(0, description="Multipart uploads left by killed processes that were aborted.")
    stale_downloads: list[str] = Field(default_factory=list, description="Staging folders of killed downloads removed from the local cache.")
    deleted_objects: int = 0
    dry_run: bool = False


def cleanup(registry: Registry, *, keep_last: int | None, grace: timedelta, dry_run: bool = False) -> CleanupReport:
    """Remove unfinished versions older than ``grace`` and, with ``keep_last``, all but the
    newest ``keep_last`` published versions; a version an alias points to is never removed.
    Allocations stay, so a removed version's number is never handed out again."""
    report = CleanupReport(dry_run=dry_run, stale_downloads=remove_stale_staging(registry.cache_root, dry_run=dry_run))
    published = {m.version: m for m in registry.versions()}
    cutoff = datetime.now(timezone.utc) - grace
    for folder in registry.version_folders():
        if folder in published:
            continue
        allocated = _allocated_at(registry, folder)
        (report.unfinished if allocated is None or allocated <= cutoff else report.too_recent).append(folder)
    if keep_last is not None:
        aliased = {state.version for state in registry.aliases().values()}
        for manifest in sorted(published.values(), key=lambda m: m.number)[:-keep_last]:
            (report.kept_for_alias if manifest.version in aliased else report.expired).append(manifest.version)
    if dry_run:
        return report
    for version in report.unfinished:
        report.deleted_objects += _delete_files(registry, version)
    for version in list(report.expired):
        removed = _delete_published(registry, version)
        if removed is None:
            report.expired.remove(version)
            report.kept_for_alias.append(version)
        else:
            report.deleted_objects += removed
    abort = getattr(registry.store, "abort_unfinished_uploads", None)
    if abort is not None:
        report.aborted_uploads = abort(f"{registry.prefix}/versions/", older_than=cutoff)
    return report


def _allocated_at(registry: Registry, version: str) -> datetime | None:
    match = re.search(r"-v(\d+)$", version)
    if not match:
        return None
    try:
        claim = json.loads(registry.store.get_bytes(f"{registry.prefix}/allocations/v{match.group(1)}.json")[0])
    except NotFound:
        return None
    return datetime.fromisoformat(claim["allocated_at"])


def _delete_files(registry: Registry, version: str) -> int:
    keys = registry.store.list_keys(f"{registry.version_prefix(version)}/")
    registry.store.delete_many(keys)
    return len(keys)


def _delete_published(registry: Registry, version: str) -> int | None:
    """Manifest first (the version disappears at once), then its files; None if an alias
    moved to it meanwhile, in which case the manifest is put back and nothing else goes."""
    key = f"{registry.version_prefix(version)}/{MANIFEST}"
    body, _ = registry.store.get_bytes(key)
    registry.store.delete(key)
    if any(state.version == version for state in registry.aliases().values()):
        registry.store.put_bytes(key, body, if_none_match=True)
        return None
    return _delete_files(registry, version) + 1
