"""Full-checksum verification of a published version in the store, remembered per object state.

Before an alias moves to a version, every file of it is streamed from the store (local
directory or S3, never whole in memory) through sha256 and compared with its manifest.
What matched is remembered by the object's fingerprint (S3: ETag and LastModified; local:
inode, mtime and ctime) in one small JSON file per version, so a second move to an
unchanged version reads no content: one HEAD (or stat) per file. Any write to a file
changes its fingerprint and brings the full check back. A local file changed too recently
for its timestamps to tell a later write apart is checked but not remembered (git's "racy"
entries).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel

from fragua.storage.store import READ_CHUNK, Fingerprint, NotFound, ObjectStore

VERIFY_WORKERS = 4


class Mismatch(BaseModel):
    """One file of a version that is not what its manifest says."""

    file: str
    problem: str


class Verification(BaseModel):
    """The outcome of one check: how many files were read in full, how many the cache vouched for."""

    version: str
    hashed: int = 0
    cached: int = 0
    mismatches: list[Mismatch] = []

    def damage(self, where: str, run_id: str | None) -> str:
        """One line for the user: which version, which file, what is wrong, what to do."""
        first, others = self.mismatches[0], len(self.mismatches) - 1
        return (
            f"version {self.version} in {where} is damaged: {first.file} {first.problem}"
            + (f" (and {others} more file{'s' if others > 1 else ''})" if others else "")
            + "; no alias was moved: deploy or roll back to another version"
            + (f", or publish its run as a new version (`fragua validate --run {run_id}`, then `fragua deploy --run {run_id}`)" if run_id else "")
        )


class VerificationCache:
    """Per version, the fingerprint each file had when its content matched the manifest.

    Kept in ``folder`` (one JSON file per store and version, written atomically, so processes
    sharing a work dir can use it at once) or, without a folder, in memory only."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def _where(self, store: ObjectStore, version: str) -> Path | str:
        scope = hashlib.sha256(store.describe().encode()).hexdigest()[:16]
        return self.folder / scope / f"{version}.json" if self.folder is not None else f"{scope}/{version}"

    def load(self, store: ObjectStore, version: str) -> dict[str, str]:
        where = self._where(store, version)
        if isinstance(where, str):
            with self._lock:
                return dict(self._memory.get(where, {}))
        try:
            return dict(json.loads(where.read_text()))
        except (OSError, ValueError):  # absent, or cut short by a crash: only costs a full check
            return {}

    def remember(self, store: ObjectStore, version: str, entries: dict[str, str]) -> None:
        where = self._where(store, version)
        if isinstance(where, str):
            with self._lock:
                self._memory[where] = {**self._memory.get(where, {}), **entries}
            return
        where.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self.load(store, version), **entries}
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=where.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(merged, handle)
            os.replace(name, where)
        finally:
            Path(name).unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_matches(folder: Path, files: Iterable[tuple[str, str, int]]) -> bool:
    """Every (relative path, sha256, size) is a file under ``folder`` with that size and checksum."""

    def matches(item: tuple[str, str, int]) -> bool:
        path = folder / item[0]
        return path.is_file() and path.stat().st_size == item[2] and sha256_file(path) == item[1]

    with ThreadPoolExecutor(VERIFY_WORKERS) as pool:
        return all(pool.map(matches, files))


def fingerprints(store: ObjectStore, prefix: str, relatives: Iterable[str]) -> dict[str, Fingerprint]:
    """The fingerprint of every file under ``prefix`` (one HEAD or stat each, in parallel)."""
    relatives = list(relatives)
    with ThreadPoolExecutor(VERIFY_WORKERS) as pool:
        return dict(zip(relatives, pool.map(lambda relative: store.fingerprint(f"{prefix}/{relative}"), relatives)))


def remember_if_unchanged(
    cache: VerificationCache, store: ObjectStore, prefix: str, version: str, checksums: dict[str, str], before: dict[str, Fingerprint]
) -> None:
    """After a download whose copies matched ``checksums``: the objects that kept their fingerprint
    (``before``, taken before the download) through it held exactly what was checked."""
    after = fingerprints(store, prefix, before)
    cache.remember(store, version, {r: cache_entry(checksums[r], fp) for r, fp in before.items() if fp.settled and after[r] == fp})


def cache_entry(sha256: str, fingerprint: Fingerprint) -> str:
    """What the cache keeps for a file: the checksum it matched and the state it was in."""
    return f"{sha256}|{fingerprint.size}|{fingerprint.identity}"


def _stream_sha256(store: ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in store.read_chunks(key):
        digest.update(chunk)
    return digest.hexdigest()


def verify_in_store(
    store: ObjectStore, prefix: str, version: str, files: Iterable[tuple[str, str, int]], cache: VerificationCache
) -> Verification:
    """Check every (relative path, sha256, size) of ``version`` under ``prefix`` against the store."""
    known = cache.load(store, version)
    outcome = Verification(version=version)
    verified: dict[str, str] = {}
    lock = threading.Lock()

    def check(item: tuple[str, str, int]) -> None:
        relative, sha256, size = item
        key = f"{prefix}/{relative}"
        try:
            before = store.fingerprint(key)
        except NotFound:
            problem = "is missing from the store"
        else:
            if before.size != size:
                problem = f"is {before.size} bytes, the manifest says {size}"
            elif known.get(relative) == cache_entry(sha256, before):
                with lock:
                    outcome.cached += 1
                return
            else:
                actual = _stream_sha256(store, key)
                with lock:
                    outcome.hashed += 1
                if actual == sha256:
                    # Only a state that stayed put while it was read, and whose timestamps would show a later write, is remembered.
                    if before.settled and store.fingerprint(key) == before:
                        with lock:
                            verified[relative] = cache_entry(sha256, before)
                    return
                problem = "does not match its manifest checksum"
        with lock:
            outcome.mismatches.append(Mismatch(file=relative, problem=problem))

    with ThreadPoolExecutor(VERIFY_WORKERS) as pool:
        list(pool.map(check, files))
    outcome.mismatches.sort(key=lambda m: m.file)
    if verified:
        cache.remember(store, version, verified)
    return outcome
