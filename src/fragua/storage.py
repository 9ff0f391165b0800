"""A small object-store interface with conditional writes, and its local-directory backend.

The registry needs exactly two guarantees from storage: create-only writes
(``if_none_match``) for allocating version numbers, and compare-and-swap writes
(``if_match`` on an ETag) for moving aliases. S3 offers both natively; the local backend
provides them with ``os.link`` (atomic create) and a per-key ``flock``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator


class StoreError(RuntimeError):
    """Storage failed; the message names the key and the backend."""


class NotFound(StoreError):
    pass


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists (create-only) or changed (compare-and-swap)."""


def check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or any(p in ("..", ".") for p in parts) or any(ord(c) < 32 for c in key):
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
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, destination: Path) -> None: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

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

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{key} not found in {self.describe()}") from exc
        return data, _etag(data)

    def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, name)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)

    def get_file(self, key: str, destination: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise NotFound(f"{key} not found in {self.describe()}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                relative = path.relative_to(self.root).as_posix()
                if not relative.startswith(".locks/"):
                    keys.append(relative)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise StoreError(f"cannot delete {key} in {self.describe()}: {exc}") from exc
