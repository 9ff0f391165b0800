"""Model registry: immutable versions, a manifest written last, aliases moved by compare-and-swap.

Layout under the store (see DESIGN.md)::

    models/<name>/allocations/v<N>.json            create-only: reserves version number N
    models/<name>/versions/<name>-<size>-v<N>/...  weights, tokenizer, README.md, reports
    models/<name>/versions/<...>/manifest.json     last; a version without it does not exist
    models/<name>/aliases/<alias>.json             {"version", "previous", ...}, moved by CAS
    models/<name>/events/<time>-<id>.json          one per alias move, for `fragua history`
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .settings import check_name
from .storage import NotFound, ObjectStore, PreconditionFailed

PRODUCTION = "production"
PREVIOUS = "previous"
MANIFEST = "manifest.json"
_ALLOCATION = re.compile(r"^v(\d+)\.json$")
ALLOCATION_ATTEMPTS = 1000


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed; the message says why and what to do."""


class AliasConflict(RegistryError):
    """Another writer moved the alias first; nothing was changed by this call."""


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


class AliasEvent(BaseModel):
    alias: str
    from_version: str | None
    to_version: str
    at: str
    reason: str
    actor: str | None = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


class Registry:
    def __init__(self, store: ObjectStore, model_name: str) -> None:
        self.store = store
        self.model_name = check_name(model_name, "model name")
        self.prefix = f"models/{self.model_name}"

    def describe(self) -> str:
        return f"{self.store.describe()}/{self.prefix}"

    def version_prefix(self, version: str) -> str:
        return f"{self.prefix}/versions/{check_name(version, 'version')}"

    # Versions -------------------------------------------------------------------------

    def allocate(self, size: str) -> str:
        """Reserve the next version number with a create-only write; safe under concurrency."""
        check_name(size, "size label")
        taken = [
            int(m.group(1))
            for key in self.store.list_keys(f"{self.prefix}/allocations/")
            if (m := _ALLOCATION.match(key.rsplit("/", 1)[-1]))
        ]
        number = max(taken, default=0) + 1
        for _ in range(ALLOCATION_ATTEMPTS):
            version = f"{self.model_name}-{size}-v{number}"
            claim = json.dumps({"version": version, "allocated_at": _now()}).encode()
            try:
                self.store.put_bytes(f"{self.prefix}/allocations/v{number}.json", claim, if_none_match=True)
                return version
            except PreconditionFailed:
                number += 1
        raise RegistryError(f"could not allocate a version number in {self.describe()} after {ALLOCATION_ATTEMPTS} attempts")

    def publish(self, version: str, files: dict[str, Path], manifest_fields: dict[str, Any]) -> VersionManifest:
        """Upload every file, then the manifest; until the manifest lands the version is invisible."""
        match = re.fullmatch(rf"{re.escape(self.model_name)}-(.+)-v(\d+)", version)
        if not match:
            raise RegistryError(f"{version!r} is not a version of {self.model_name} (expected {self.model_name}-<size>-v<N>)")
        prefix = self.version_prefix(version)
        if self.store.exists(f"{prefix}/{MANIFEST}"):
            raise RegistryError(f"version {version} already exists in {self.describe()}; versions are immutable")
        entries: dict[str, FileEntry] = {}
        for relative, path in sorted(files.items()):
            if relative == MANIFEST:
                raise RegistryError(f"a version file may not be called {MANIFEST}")
            entries[relative] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
            self.store.put_file(f"{prefix}/{relative}", path)
        manifest = VersionManifest(
            version=version,
            model_name=self.model_name,
            size=match.group(1),
            number=int(match.group(2)),
            created_at=_now(),
            files=entries,
            **manifest_fields,
        )
        self.store.put_bytes(f"{prefix}/{MANIFEST}", manifest.model_dump_json(indent=2).encode(), if_none_match=True)
        return manifest

    def manifest(self, version: str) -> VersionManifest:
        try:
            data, _ = self.store.get_bytes(f"{self.version_prefix(version)}/{MANIFEST}")
        except NotFound as exc:
            known = ", ".join(m.version for m in self.versions()) or "none yet"
            raise RegistryError(f"no version {version!r} in {self.describe()} (versions: {known})") from exc
        return VersionManifest.model_validate_json(data)

    def versions(self) -> list[VersionManifest]:
        """Published versions (with a manifest), oldest first."""
        manifests = []
        for key in self.store.list_keys(f"{self.prefix}/versions/"):
            parts = key.split("/")
            if len(parts) == 5 and parts[-1] == MANIFEST:
                data, _ = self.store.get_bytes(key)
                manifests.append(VersionManifest.model_validate_json(data))
        return sorted(manifests, key=lambda m: m.number)

    def fetch(self, version: str, cache_root: Path) -> Path:
        """A verified local copy of a version: every file's sha256 checked against the manifest."""
        manifest = self.manifest(version)
        target = cache_root / version
        if target.is_dir() and self._verified(target, manifest):
            return target
        staging = cache_root / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        prefix = self.version_prefix(version)
        for relative in manifest.files:
            self.store.get_file(f"{prefix}/{relative}", staging / relative)
        if not self._verified(staging, manifest):
            shutil.rmtree(staging, ignore_errors=True)
            raise RegistryError(f"version {version} in {self.describe()} failed checksum verification; re-publish it")
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    @staticmethod
    def _verified(folder: Path, manifest: VersionManifest) -> bool:
        for relative, entry in manifest.files.items():
            path = folder / relative
            if not path.is_file() or path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                return False
        return True

    # Aliases --------------------------------------------------------------------------

    def _alias_key(self, alias: str) -> str:
        return f"{self.prefix}/aliases/{check_name(alias, 'alias')}.json"

    def alias(self, alias: str) -> tuple[AliasState | None, str | None]:
        """Current state and ETag of an alias (None, None when unset)."""
        try:
            data, etag = self.store.get_bytes(self._alias_key(alias))
        except NotFound:
            return None, None
        return AliasState.model_validate_json(data), etag

    def aliases(self) -> dict[str, AliasState]:
        found = {}
        for key in self.store.list_keys(f"{self.prefix}/aliases/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            state, _ = self.alias(name)
            if state:
                found[name] = state
        return found

    def set_alias(self, alias: str, version: str, *, reason: str, actor: str | None = None, expected: tuple[AliasState | None, str | None] | None = None) -> AliasState:
        """Point ``alias`` at ``version`` if it is still as the caller last read it."""
        self.manifest(version)
        current, etag = expected if expected is not None else self.alias(alias)
        state = AliasState(
            alias=alias,
            version=version,
            previous=current.version if current else None,
            updated_at=_now(),
            reason=reason,
            actor=actor,
        )
        body = state.model_dump_json(indent=2).encode()
        try:
            if etag is None:
                self.store.put_bytes(self._alias_key(alias), body, if_none_match=True)
            else:
                self.store.put_bytes(self._alias_key(alias), body, if_match=etag)
        except PreconditionFailed as exc:
            now, _ = self.alias(alias)
            raise AliasConflict(
                f"alias {alias!r} moved while this change was prepared (expected {current.version if current else 'unset'}, "
                f"now {now.version if now else 'unset'}); nothing was changed, re-run to apply on top of the new state"
            ) from exc
        self._record(AliasEvent(alias=alias, from_version=state.previous, to_version=version, at=state.updated_at, reason=reason, actor=actor))
        return state

    def promote(
        self, version: str, *, reason: str, actor: str | None = None, expected: tuple[AliasState | None, str | None] | None = None
    ) -> AliasState:
        """Move production to ``version`` (if still as ``expected``) and previous to what production was."""
        expected = expected if expected is not None else self.alias(PRODUCTION)
        state = self.set_alias(PRODUCTION, version, reason=reason, actor=actor, expected=expected)
        if state.previous and state.previous != version:
            self._point_previous(state.previous, reason=f"production moved to {version}", actor=actor)
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
        if to == current.version:
            raise RegistryError(f"production already points to {to}")
        return self.promote(to, reason=f"rollback from {current.version}", actor=actor, expected=expected)

    def _point_previous(self, version: str, *, reason: str, actor: str | None) -> None:
        for _ in range(5):
            try:
                self.set_alias(PREVIOUS, version, reason=reason, actor=actor)
                return
            except AliasConflict:
                continue
        raise AliasConflict(f"could not update alias {PREVIOUS!r} after 5 attempts")

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
