"""Model registry: immutable versions, a manifest written last, aliases moved by compare-and-swap.

Layout under the store (see DESIGN.md)::

    models/<name>/allocations/v<N>.json            create-only: reserves version number N
    models/<name>/versions/<name>-<size>-v<N>/...  weights, tokenizer, README.md, reports
    models/<name>/versions/<...>/manifest.json     last; a version without it does not exist
    models/<name>/aliases/<alias>.json             {"version", "previous", ...}, moved by CAS
    models/<name>/events/<time>-<id>.json          one per alias move, for `fragua history`

Allocations are never deleted, so a number is never handed out twice, even after
`gc` or retention removed the version that had it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fragua.registry.downloads import MANIFEST, ProgressFactory, download_version, remove_stale_staging
from fragua.registry.verify import Verification, VerificationCache, folder_matches, sha256_file, verify_in_store
from fragua.settings import NAME_PATTERN, check_name
from fragua.storage.store import NotFound, ObjectStore, PreconditionFailed, Progress

logger = logging.getLogger("fragua.registry")

PRODUCTION = "production"
PREVIOUS = "previous"
_ALLOCATION = re.compile(r"^v(\d+)\.json$")
ALLOCATION_ATTEMPTS = 1000
# Weights are loaded with safetensors only; pickle-based files could run code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HASH_WORKERS = 4


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed; the message says why and what to do."""


class AliasConflict(RegistryError):
    """Another writer moved the alias first; nothing was changed by this call."""


class VersionDamaged(RegistryError):
    """A published version's files in the store do not match its manifest: no alias may move to it."""


class InvalidName(RegistryError, ValueError):
    """A version, alias or size label that could escape the registry's prefix ('..', '/', ...)."""


def _checked(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise InvalidName(str(exc)) from None


class FileEntry(BaseModel):
    sha256: str
    size: int


class VersionManifest(BaseModel):
    version: str
    model_name: str
    size: str
    number: int
    created_at: str
    files: dict[str, FileEntry] = Field(description="sha256 and size of every file of the version, manifest excluded.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    decision: dict[str, Any] = Field(default_factory=dict, description="Validation gate outcome and reasons.")
    lineage: dict[str, Any] = Field(default_factory=dict, description="Base model, parent version, dataset, settings, tracking run, flow run.")


class AliasState(BaseModel):
    alias: str
    version: str
    previous: str | None = None
    updated_at: str
    reason: str = ""
    actor: str | None = None
    traffic_percent: float | None = Field(
        None, gt=0, lt=100, description="The share of production's requests this alias serves (the canary); None for every other alias."
    )


class AliasEvent(BaseModel):
    alias: str
    from_version: str | None
    to_version: str | None = Field(description="None when the alias was removed (a first deploy undone).")
    at: str
    reason: str
    actor: str | None = None
    traffic_percent: float | None = None


def size_label(parameters: int) -> str:
    """'tiny' below 50M parameters, else a rounded count such as '500m' or '7b'."""
    if parameters < 50_000_000:
        return "tiny"
    if parameters < 1_000_000_000:
        return f"{round(parameters / 1e6, -1):.0f}m"
    billions = parameters / 1e9
    return f"{billions:.0f}b" if billions >= 10 else f"{billions:.1f}b".replace(".0b", "b")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _is_name(value: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(value)) and ".." not in value


def _no_progress(description: str, total: int) -> AbstractContextManager[Progress | None]:
    return nullcontext(None)


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


class Registry:
    def __init__(
        self, store: ObjectStore, model_name: str, *, progress: ProgressFactory | None = None, cache_root: Path | None = None,
        verification_cache: Path | None = None,
    ) -> None:
        self.store = store
        self.model_name = check_name(model_name, "model name")
        self.prefix = f"models/{self.model_name}"
        self.progress: ProgressFactory = progress or _no_progress
        self.cache_root = cache_root  # where fetch() puts versions unless told otherwise
        # What verify() found intact, by object fingerprint (in memory only without a folder).
        self.verifications = VerificationCache(verification_cache)

    def describe(self) -> str:
        return f"{self.store.describe()}/{self.prefix}"

    def version_prefix(self, version: str) -> str:
        return f"{self.prefix}/versions/{_checked(version, 'version')}"

    # Versions -------------------------------------------------------------------------

    def allocate(self, size: str) -> str:
        """Reserve the next version number with a create-only write; safe under concurrency."""
        _checked(size, "size label")
        taken = [
            int(m.group(1))
            for key in self.store.list_keys(f"{self.prefix}/allocations/")
            if (m := _ALLOCATION.match(key.rsplit("/", 1)[-1]))
        ]
        number = max(taken, default=0) + 1
        token = uuid.uuid4().hex
        for _ in range(ALLOCATION_ATTEMPTS):
            version = f"{self.model_name}-{size}-v{number}"
            key = f"{self.prefix}/allocations/v{number}.json"
            claim = json.dumps({"version": version, "allocated_at": _now(), "token": token}).encode()
            try:
                self.store.put_bytes(key, claim, if_none_match=True)
                return version
            except PreconditionFailed:
                # A retried request whose first attempt did land finds its own claim: keep it.
                if json.loads(self.store.get_bytes(key)[0]).get("token") == token:
                    return version
                number += 1
        raise RegistryError(f"could not allocate a version number in {self.describe()} after {ALLOCATION_ATTEMPTS} attempts")

    def publish(self, version: str, files: dict[str, Path], manifest_fields: dict[str, Any]) -> VersionManifest:
        """Upload every file, then the manifest; until the manifest lands the version is invisible.

        Re-running it for the same version (a retried task) uploads again and succeeds if
        the manifest it would write is already there with the same files.
        """
        match = re.fullmatch(rf"{re.escape(self.model_name)}-(.+)-v(\d+)", version)
        if not match:
            raise RegistryError(f"{version!r} is not a version of {self.model_name} (expected {self.model_name}-<size>-v<N>)")
        prefix = self.version_prefix(version)
        for relative in files:
            if relative == MANIFEST:
                raise RegistryError(f"a version file may not be called {MANIFEST}")
            if relative.lower().endswith(PICKLE_SUFFIXES):
                raise RegistryError(f"{relative}: pickle-based weights are not accepted (they can run code when loaded); save with safetensors")
        with ThreadPoolExecutor(HASH_WORKERS) as hashing:
            # Hash while uploading; a file that changed in between fails verification later.
            digests = {relative: hashing.submit(sha256_file, path) for relative, path in files.items()}
            existing = self._existing_manifest(version)
            if existing is None:
                total = sum(path.stat().st_size for path in files.values())
                with self.progress(f"uploading {version}", total) as progress:
                    self.store.put_files([(f"{prefix}/{relative}", path) for relative, path in sorted(files.items())], progress)
            entries = {relative: FileEntry(sha256=digests[relative].result(), size=path.stat().st_size) for relative, path in sorted(files.items())}
        if existing is not None:
            if existing.files == entries:
                return existing
            raise RegistryError(f"version {version} already exists in {self.describe()}; versions are immutable")
        manifest = VersionManifest(
            version=version,
            model_name=self.model_name,
            size=match.group(1),
            number=int(match.group(2)),
            created_at=_now(),
            files=entries,
            **manifest_fields,
        )
        try:
            self.store.put_bytes(f"{prefix}/{MANIFEST}", manifest.model_dump_json(indent=2).encode(), if_none_match=True)
        except PreconditionFailed:
            existing = self._existing_manifest(version)
            if existing is not None and existing.files == entries:
                return existing
            raise RegistryError(f"version {version} was published by someone else meanwhile in {self.describe()}; versions are immutable")
        return manifest

    def _existing_manifest(self, version: str) -> VersionManifest | None:
        try:
            data, _ = self.store.get_bytes(f"{self.version_prefix(version)}/{MANIFEST}")
        except NotFound:
            return None
        return VersionManifest.model_validate_json(data)

    def manifest(self, version: str) -> VersionManifest:
        try:
            data, _ = self.store.get_bytes(f"{self.version_prefix(version)}/{MANIFEST}")
        except NotFound as exc:
            known = ", ".join(m.version for m in self.versions()) or "none yet"
            raise RegistryError(f"no version {version!r} in {self.describe()} (versions: {known})") from exc
        return VersionManifest.model_validate_json(data)

    def versions(self) -> list[VersionManifest]:
        """Published versions (with a manifest), oldest first."""
        manifests = [m for m in map(self._existing_manifest, self._version_folders()) if m is not None]
        return sorted(manifests, key=lambda m: m.number)

    def _version_folders(self) -> list[str]:
        """Every version folder in the store, finished or not."""
        return [name for name in self.store.list_children(f"{self.prefix}/versions/") if _is_name(name)]

    def fetch(self, version: str, cache_root: Path | None = None) -> Path:
        """A verified local copy of a version: every file's sha256 checked against the manifest."""
        cache_root = cache_root or self.cache_root
        if cache_root is None:
            raise ValueError("Registry.fetch needs a cache folder: pass cache_root, here or when opening the registry")
        manifest = self.manifest(version)
        files = {relative: (entry.sha256, entry.size) for relative, entry in manifest.files.items()}
        folder = download_version(
            self.store, self.version_prefix(version), version, files, cache_root,
            progress=self.progress, verifications=self.verifications, manifest_json=manifest.model_dump_json(indent=2),
        )
        if folder is None:
            raise VersionDamaged(f"version {version} in {self.describe()} failed checksum verification; re-publish it")
        return folder

    @staticmethod
    def _verified(folder: Path, manifest: VersionManifest) -> bool:
        return folder_matches(folder, [(relative, entry.sha256, entry.size) for relative, entry in manifest.files.items()])

    def verify(self, version: str) -> Verification:
        """Every file of ``version`` in the store, streamed through sha256, against its manifest; files
        unchanged since an earlier check are vouched for by the cache. Raises VersionDamaged."""
        manifest = self.manifest(version)
        files = [(relative, entry.sha256, entry.size) for relative, entry in manifest.files.items()]
        outcome = verify_in_store(self.store, self.version_prefix(version), version, files, self.verifications)
        if outcome.mismatches:
            raise VersionDamaged(outcome.damage(self.describe(), manifest.lineage.get("run_id")))
        logger.info("verified %s: %d files read in full, %d unchanged since their last check", version, outcome.hashed, outcome.cached)
        return outcome

    def confirm(self, alias: str, version: str) -> None:
        """After a move: ``alias`` resolves to ``version`` and every file of it is in the store at its size."""
        state, _ = self.alias(alias)
        if state is None or state.version != version:
            raise RegistryError(f"alias {alias!r} points to {state.version if state else 'nothing'}, not {version}")
        prefix = self.version_prefix(version)
        for relative, entry in self.manifest(version).files.items():
            try:
                size = self.store.size(f"{prefix}/{relative}")
            except NotFound as exc:
                raise RegistryError(f"{version} in {self.describe()} lost {relative}") from exc
            if size != entry.size:
                raise RegistryError(f"{version} in {self.describe()}: {relative} is {size} bytes, the manifest says {entry.size}")

    # Aliases --------------------------------------------------------------------------

    def _alias_key(self, alias: str) -> str:
        return f"{self.prefix}/aliases/{_checked(alias, 'alias')}.json"

    def alias(self, alias: str) -> tuple[AliasState | None, str | None]:
        """Current state and ETag of an alias (None, None when unset)."""
        try:
            data, etag = self.store.get_bytes(self._alias_key(alias))
        except NotFound:
            return None, None
        return AliasState.model_validate_json(data), etag

    def production(self) -> AliasState | None:
        """Where the production alias points, or None before the first deploy."""
        return self.alias(PRODUCTION)[0]

    def aliases(self) -> dict[str, AliasState]:
        found = {}
        for key in self.store.list_keys(f"{self.prefix}/aliases/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            state, _ = self.alias(name)
            if state:
                found[name] = state
        return found

    def set_alias(
        self, alias: str, version: str, *, reason: str, actor: str | None = None, expected: tuple[AliasState | None, str | None] | None = None,
        verify: bool = True, traffic_percent: float | None = None,
    ) -> AliasState:
        """Point ``alias`` at ``version`` if it is still as the caller last read it; first every
        file's checksum is verified (``verify``; off only to record or restore, never to serve).
        ``traffic_percent`` gives the alias a share of production's requests (the canary)."""
        if verify:
            self.verify(version)
        else:
            self.manifest(version)
        current, etag = expected if expected is not None else self.alias(alias)
        state = AliasState(
            alias=alias,
            version=version,
            previous=current.version if current else None,
            updated_at=_now(),
            reason=reason,
            actor=actor,
            traffic_percent=traffic_percent,
        )
        written = self._swap(alias, state, current, etag)
        if not self.store.exists(f"{self.version_prefix(version)}/{MANIFEST}"):
            # Retention deleted the version between our check and our write: undo the write.
            self._swap(alias, current, state, written)
            raise RegistryError(f"version {version} was deleted from {self.describe()} while alias {alias!r} moved to it; the alias is unchanged")
        self._record(AliasEvent(
            alias=alias, from_version=state.previous, to_version=version, at=state.updated_at, reason=reason, actor=actor, traffic_percent=traffic_percent,
        ))
        return state

    def remove_alias(
        self, alias: str, *, reason: str, actor: str | None = None, expected: tuple[AliasState | None, str | None] | None = None
    ) -> AliasState | None:
        """Remove ``alias`` if it is still as the caller last read it, and record the removal; returns
        what it pointed to (None when it was not set)."""
        current, etag = expected if expected is not None else self.alias(alias)
        if current is not None:
            self._move_or_remove(alias, None, (current, etag), reason=reason, actor=actor)
        return current

    def _swap(self, alias: str, new: AliasState | None, current: AliasState | None, etag: str | None) -> str | None:
        """Compare-and-swap one alias object from ``current`` (read with ``etag``) to ``new`` (None removes it)."""
        key = self._alias_key(alias)
        try:
            if new is None:
                self.store.delete_if_match(key, etag)
                return None
            body = new.model_dump_json(indent=2).encode()
            if etag is None:
                return self.store.put_bytes(key, body, if_none_match=True)
            return self.store.put_bytes(key, body, if_match=etag)
        except PreconditionFailed as exc:
            now, _ = self.alias(alias)
            raise AliasConflict(
                f"alias {alias!r} moved while this change was prepared (expected {current.version if current else 'unset'}, "
                f"now {now.version if now else 'unset'}); nothing was changed, re-run to apply on top of the new state"
            ) from exc

    def promote(
        self, version: str, *, reason: str, actor: str | None = None, expected: tuple[AliasState | None, str | None] | None = None
    ) -> AliasState:
        """Move production to ``version`` (if still as ``expected``) and previous to what production was."""
        expected = expected if expected is not None else self.alias(PRODUCTION)
        state = self.set_alias(PRODUCTION, version, reason=reason, actor=actor, expected=expected)
        if state.previous and state.previous != version:
            if self._existing_manifest(state.previous) is not None:
                self._record_previous(state.previous, reason=f"production moved to {version}", actor=actor)
            else:  # the older version previous named is not what came before: no previous at all
                self._record_previous(None, reason=f"production moved to {version} from {state.previous}, which is no longer in the registry", actor=actor)
        return state

    def rollback(self, to: str | None = None, *, actor: str | None = None) -> AliasState:
        """Move production back (to ``previous`` by default): an alias move, no weights copied."""
        expected = self.alias(PRODUCTION)
        current = expected[0]
        if current is None:
            raise RegistryError(f"nothing to roll back: no production version in {self.describe()}")
        if to is None:
            previous, _ = self.alias(PREVIOUS)
            if previous is None:
                raise RegistryError(f"no previous version to roll back to from {current.version}; name one with --to")
            to = previous.version
            if self._existing_manifest(to) is None:
                known = ", ".join(m.version for m in self.versions() if m.version != current.version) or "none"
                raise RegistryError(
                    f"previous points to {to}, which is no longer in {self.describe()} (its manifest is gone); "
                    f"name the version to roll back to with --to (published: {known})"
                )
        if to == current.version:
            raise RegistryError(f"production already points to {to}")
        return self.promote(to, reason=f"rollback from {current.version}", actor=actor, expected=expected)

    def _record_previous(self, version: str | None, *, reason: str, actor: str | None) -> None:
        """Point ``previous`` at ``version`` (None removes it). Only a record of where production
        was, so not verified here: a rollback verifies the version before moving to it."""
        for _ in range(5):
            try:
                if version is not None:
                    self.set_alias(PREVIOUS, version, reason=reason, actor=actor, verify=False)
                    return
                current, etag = self.alias(PREVIOUS)
                if current is not None:
                    self._move_or_remove(PREVIOUS, None, (current, etag), reason=reason, actor=actor)
                return
            except AliasConflict:
                continue
        raise AliasConflict(f"could not update alias {PREVIOUS!r} after 5 attempts")

    def revert(self, moved: AliasState, previous_before: str | None, *, reason: str, actor: str | None = None) -> bool:
        """Undo the promotion that produced ``moved`` (a failed step after the move).

        Production goes back to what it was (or is removed after a first deploy) and
        ``previous`` back to ``previous_before``, each by compare-and-swap. If anyone moved
        production since, nothing is touched and False is returned: their move wins.
        """
        current, etag = self.alias(PRODUCTION)
        if current is None or current.version != moved.version or current.updated_at != moved.updated_at:
            return False
        self._move_or_remove(PRODUCTION, moved.previous, (current, etag), reason=reason, actor=actor)
        previous, previous_etag = self.alias(PREVIOUS)
        if previous is not None and previous.version == moved.previous and previous_before != previous.version:
            self._move_or_remove(PREVIOUS, previous_before, (previous, previous_etag), reason=reason, actor=actor)
        return True

    def _move_or_remove(self, alias: str, version: str | None, expected: tuple[AliasState, str | None], *, reason: str, actor: str | None) -> None:
        if version is not None:
            # Putting back what was there before: no check may stand in the way of an undo.
            self.set_alias(alias, version, reason=reason, actor=actor, expected=expected, verify=False)
            return
        current, etag = expected
        self._swap(alias, None, current, etag)
        self._record(AliasEvent(alias=alias, from_version=current.version, to_version=None, at=_now(), reason=reason, actor=actor))

    def _record(self, event: AliasEvent) -> None:
        stamp = event.at.replace(":", "").replace("-", "").replace("+0000", "Z")
        key = f"{self.prefix}/events/{stamp}-{uuid.uuid4().hex[:8]}.json"
        self.store.put_bytes(key, event.model_dump_json().encode(), if_none_match=True)

    def history(self) -> list[AliasEvent]:
        events = [
            AliasEvent.model_validate_json(self.store.get_bytes(key)[0])
            for key in self.store.list_keys(f"{self.prefix}/events/")
        ]
        return sorted(events, key=lambda e: e.at)

    # Garbage collection and retention ---------------------------------------------------

    def cleanup(self, *, keep_last: int | None, grace: timedelta, dry_run: bool = False) -> CleanupReport:
        """Remove unfinished versions older than ``grace`` and, with ``keep_last``, all but the
        newest ``keep_last`` published versions; a version an alias points to is never removed.
        Allocations stay, so a removed version's number is never handed out again."""
        report = CleanupReport(dry_run=dry_run, stale_downloads=remove_stale_staging(self.cache_root, dry_run=dry_run))
        published = {m.version: m for m in self.versions()}
        cutoff = datetime.now(timezone.utc) - grace
        for folder in self._version_folders():
            if folder in published:
                continue
            allocated = self._allocated_at(folder)
            (report.unfinished if allocated is None or allocated <= cutoff else report.too_recent).append(folder)
        if keep_last is not None:
            aliased = {state.version for state in self.aliases().values()}
            for manifest in sorted(published.values(), key=lambda m: m.number)[:-keep_last]:
                (report.kept_for_alias if manifest.version in aliased else report.expired).append(manifest.version)
        if dry_run:
            return report
        for version in report.unfinished:
            report.deleted_objects += self._delete_files(version)
        for version in list(report.expired):
            removed = self._delete_published(version)
            if removed is None:
                report.expired.remove(version)
                report.kept_for_alias.append(version)
            else:
                report.deleted_objects += removed
        abort = getattr(self.store, "abort_unfinished_uploads", None)
        if abort is not None:
            report.aborted_uploads = abort(f"{self.prefix}/versions/", older_than=cutoff)
        return report

    def _allocated_at(self, version: str) -> datetime | None:
        match = re.search(r"-v(\d+)$", version)
        if not match:
            return None
        try:
            claim = json.loads(self.store.get_bytes(f"{self.prefix}/allocations/v{match.group(1)}.json")[0])
        except NotFound:
            return None
        return datetime.fromisoformat(claim["allocated_at"])

    def _delete_files(self, version: str) -> int:
        keys = self.store.list_keys(f"{self.version_prefix(version)}/")
        self.store.delete_many(keys)
        return len(keys)

    def _delete_published(self, version: str) -> int | None:
        """Manifest first (the version disappears at once), then its files; None if an alias
        moved to it meanwhile, in which case the manifest is put back and nothing else goes."""
        key = f"{self.version_prefix(version)}/{MANIFEST}"
        body, _ = self.store.get_bytes(key)
        self.store.delete(key)
        if any(state.version == version for state in self.aliases().values()):
            self.store.put_bytes(key, body, if_none_match=True)
            return None
        return self._delete_files(version) + 1
