"""A small object-store interface with conditional writes, and its local-directory backend.

The registry needs exactly two guarantees from storage: create-only writes
(``if_none_match``) for allocating version numbers, and compare-and-swap writes
(``if_match`` on an ETag) for moving aliases. S3 offers both natively (see ``fragua.s3``);
the local backend provides them with ``os.link`` (atomic create) and a per-key ``flock``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

# Called with the number of bytes moved since the last call (boto3's Callback contract).
Progress = Callable[[int], None]
LOCAL_COPY_WORKERS = 4
READ_CHUNK = 1 << 20
# A local file changed this recently may change again within the same filesystem timestamp
# tick (1 s on some filesystems) without its mtime/ctime moving: its fingerprint is not settled.
SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class Fingerprint:
    """What identifies one stored state of an object without reading it."""

    size: int
    identity: str  # changes whenever the content may have changed (S3: ETag; local: mtime, ctime, inode)
    settled: bool = True  # False: a write right now might leave ``identity`` unchanged


class StoreError(RuntimeError):
    """Storage failed; the message names the key and the backend."""


class NotFound(StoreError):
    pass


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists (create-only) or changed (compare-and-swap)."""


class StoreConfigurationError(StoreError):
    """Storage refused us for a reason retrying cannot fix: no such bucket, bad credentials."""


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or mean different things on disk and in S3:
    absolute, '.'/'..' parts, empty parts ('a//b'; a trailing '/' marks a prefix) and control characters."""
    parts = key.split("/")
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if not parts or any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise StoreError(f"invalid storage key {key!r}")
    return key


class ObjectStore(ABC):
    @abstractmethod
    def describe(self) -> str:
        """Where objects live, for messages (a path or an s3:// URL)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write an object and return its ETag; raise PreconditionFailed when a condition fails."""

    @abstractmethod
    def get_bytes(self, key: str) -> tuple[bytes, str]:
        """Object content and ETag; NotFound if absent."""

    @abstractmethod
    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        """Upload a file (unconditionally); ``progress`` gets byte counts as they move."""

    @abstractmethod
    def get_file(self, key: str, destination: Path, progress: Progress | None = None) -> None:
        """Download an object to ``destination``; NotFound if absent."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size of an object in bytes; NotFound if absent."""

    @abstractmethod
    def fingerprint(self, key: str) -> Fingerprint:
        """Size and identity of an object, without reading its content; NotFound if absent."""

    @abstractmethod
    def read_chunks(self, key: str) -> Iterator[bytes]:
        """An object's content, streamed in chunks (never whole in memory); NotFound if absent."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a plain string prefix), sorted."""

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the immediate 'folders' under ``prefix`` (which ends with '/'), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; absent objects are not an error."""

    @abstractmethod
    def delete_if_match(self, key: str, etag: str | None) -> None:
        """Remove an object only if its ETag is still ``etag``; PreconditionFailed otherwise."""

    def put_files(self, pairs: list[tuple[str, Path]], progress: Progress | None = None) -> None:
        """Upload many files (key, local path); backends may move them in parallel."""
        for key, path in pairs:
            self.put_file(key, path, progress)

    def get_files(self, pairs: list[tuple[str, Path]], progress: Progress | None = None) -> None:
        """Download many objects (key, local destination); backends may move them in parallel."""
        for key, destination in pairs:
            self.get_file(key, destination, progress)

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

    def exists(self, key: str) -> bool:
        try:
            self.get_bytes(key)
        except NotFound:
            return False
        return True


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStore(ObjectStore):
    """Objects as files under a root folder; safe for concurrent processes on one machine."""

    def put_files(self, pairs: list[tuple[str, Path]], progress: Progress | None = None) -> None:
        with ThreadPoolExecutor(LOCAL_COPY_WORKERS) as pool:
            list(pool.map(lambda pair: self.put_file(pair[0], pair[1], progress), pairs))

    def get_files(self, pairs: list[tuple[str, Path]], progress: Progress | None = None) -> None:
        with ThreadPoolExecutor(LOCAL_COPY_WORKERS) as pool:
            list(pool.map(lambda pair: self.get_file(pair[0], pair[1], progress), pairs))

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock_file = locks / hashlib.sha256(key.encode()).hexdigest()
        with lock_file.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _staged(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return Path(name)

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        target = self.path(key)
        staged = self._staged(target, data)
        try:
            if if_none_match:
                try:
                    os.link(staged, target)
                except FileExistsError as exc:
                    raise PreconditionFailed(f"{key} already exists in {self.describe()}") from exc
            elif if_match is not None:
                with self._locked(key):
                    current = _etag(target.read_bytes()) if target.exists() else None
                    if current != if_match:
                        raise PreconditionFailed(f"{key} changed in {self.describe()} (expected ETag {if_match}, found {current})")
                    os.replace(staged, target)
            else:
                with self._locked(key):
                    os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
        return _etag(data)

    def delete_if_match(self, key: str, etag: str | None) -> None:
        target = self.path(key)
        with self._locked(key):
            current = _etag(target.read_bytes()) if target.exists() else None
            if current is None or current != etag:
                raise PreconditionFailed(f"{key} changed in {self.describe()} (expected ETag {etag}, found {current})")
            self.delete(key)

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{key} not found in {self.describe()}") from exc
        return data, _etag(data)

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, name)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)
        if progress:
            progress(target.stat().st_size)

    def get_file(self, key: str, destination: Path, progress: Progress | None = None) -> None:
        source = self.path(key)
        if not source.is_file():
            raise NotFound(f"{key} not found in {self.describe()}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        if progress:
            progress(destination.stat().st_size)

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"{key} not found in {self.describe()}") from exc

    def fingerprint(self, key: str) -> Fingerprint:
        try:
            stat = self.path(key).stat()
        except FileNotFoundError as exc:
            raise NotFound(f"{key} not found in {self.describe()}") from exc
        changed = max(stat.st_mtime_ns, stat.st_ctime_ns)
        return Fingerprint(
            size=stat.st_size,
            identity=f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_ctime_ns}",
            settled=time.time_ns() - changed > SETTLE_SECONDS * 1e9,
        )

    def read_chunks(self, key: str) -> Iterator[bytes]:
        try:
            handle = self.path(key).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"{key} not found in {self.describe()}") from exc
        with handle:
            yield from iter(lambda: handle.read(READ_CHUNK), b"")

    def list_keys(self, prefix: str) -> list[str]:
        # Walk only the folder that holds the prefix, then match it as a string, as S3 does.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                relative = path.relative_to(self.root).as_posix()
                if relative.startswith(prefix) and not relative.startswith(".locks/"):
                    keys.append(relative)
        return sorted(keys)

    def list_children(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and any(f.is_file() for f in p.rglob("*")))

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise StoreError(f"cannot delete {key} in {self.describe()}: {exc}") from exc
        # Empty folders are not objects: remove them so a deleted version leaves nothing behind.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break
