"""Downloads of versions into the local cache, in staging folders; removal of those a killed download left.

Each download goes into ``.<version>.<random>.partial`` next to where the version will
live, and holds an exclusive ``flock`` on ``.<version>.<random>.lock`` for as long as it
runs; the lock is taken before the folder exists. The kernel drops the lock when the
process dies, however it dies, so a staging folder whose lock can be taken is one no
download is writing to any more, and is removed by the next download or `registry gc`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from fragua.registry.verify import VerificationCache, fingerprints, folder_matches, remember_if_unchanged
from fragua.storage.store import ObjectStore, Progress

MANIFEST = "manifest.json"
# (description, total bytes) -> a context manager yielding a byte-count callback.
ProgressFactory = Callable[[str, int], AbstractContextManager[Progress]]

STAGING_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
# A staging folder without a lock file comes from a Fragua before these locks, or from the
# instant between taking the lock and creating the folder: removed only when this old.
UNLOCKED_STAGING_AGE_S = 3600.0


@contextmanager
def staging_folder(cache_root: Path, version: str) -> Iterator[Path]:
    """A fresh folder for one download, locked while in use and removed on the way out."""
    cache_root.mkdir(parents=True, exist_ok=True)
    fd, lock_name = tempfile.mkstemp(prefix=f".{version}.", suffix=LOCK_SUFFIX, dir=cache_root)
    lock = Path(lock_name)
    staging = lock.with_name(lock.name.removesuffix(LOCK_SUFFIX) + STAGING_SUFFIX)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        staging.mkdir()
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)


def _unused(lock: Path) -> bool:
    """True when no live process holds ``lock`` (the lock is then taken and released here)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False  # its download just finished and cleaned up after itself
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def remove_stale_staging(cache_root: Path | None, *, dry_run: bool = False) -> list[str]:
    """Remove the staging folders (and locks) of downloads that are no longer running; their names."""
    if cache_root is None or not cache_root.is_dir():
        return []
    removed = []
    for entry in sorted(cache_root.iterdir()):
        if entry.name.startswith(".") and entry.name.endswith(STAGING_SUFFIX) and entry.is_dir():
            lock = entry.with_name(entry.name.removesuffix(STAGING_SUFFIX) + LOCK_SUFFIX)
            if lock.exists():
                stale = _unused(lock)
            else:
                stale = time.time() - entry.stat().st_mtime > UNLOCKED_STAGING_AGE_S
            if stale and not dry_run:
                shutil.rmtree(entry, ignore_errors=True)
                lock.unlink(missing_ok=True)
            if stale:
                removed.append(entry.name)
        elif not dry_run and entry.name.startswith(".") and entry.name.endswith(LOCK_SUFFIX) and entry.is_file():
            staging = entry.with_name(entry.name.removesuffix(LOCK_SUFFIX) + STAGING_SUFFIX)
            if not staging.exists() and _unused(entry):
                entry.unlink(missing_ok=True)  # a download killed before it made its folder
    return removed


def download_version(
    store: ObjectStore, prefix: str, version: str, files: dict[str, tuple[str, int]], cache_root: Path, *,
    progress: ProgressFactory, verifications: VerificationCache, manifest_json: str,
) -> Path | None:
    """``cache_root/<version>`` holding every (relative path: sha256, size) of ``files`` under ``prefix``,
    downloaded unless already there intact, plus the manifest; None (and nothing left behind)
    when the downloaded copy does not match."""
    target = cache_root / version
    remove_stale_staging(cache_root)
    expected = [(relative, sha256, size) for relative, (sha256, size) in files.items()]
    if target.is_dir() and folder_matches(target, expected):
        return target
    # A staging folder of its own: processes sharing a work dir may fetch the same version at once.
    with staging_folder(cache_root, version) as staging:
        before = fingerprints(store, prefix, files)
        with progress(f"downloading {version}", sum(size for _, size in files.values())) as report:
            store.get_files([(f"{prefix}/{relative}", staging / relative) for relative in files], report)
        if not folder_matches(staging, expected):
            return None
        # What was downloaded intact needs no second read before an alias moves to it.
        remember_if_unchanged(verifications, store, prefix, version, {relative: sha256 for relative, (sha256, _) in files.items()}, before)
        (staging / MANIFEST).write_text(manifest_json)
        try:
            staging.rename(target)
        except OSError:  # a copy is in the way: a concurrent fetch's (keep it) or a stale one (replace it)
            if not (target.is_dir() and folder_matches(target, expected)):
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    return target
