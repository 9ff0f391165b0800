"""Inputs to ingest: the sources a configuration names, what a read of one yields, and fingerprints.

A source is a file (JSONL, JSON, CSV, Parquet), a folder written by ``datasets``'
``save_to_disk``, or a Hugging Face hub dataset (``hf:NAME``). Its rows come back in
batches (:class:`RawBatch`, read by :mod:`fragua.data.readers`), each row with its location.
A source's fingerprint (content hash, or pinned hub revision) is what ingest's cache key is made of.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from fragua.data.records import RowError
from fragua.settings import HF_PREFIX, SourceSpec

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DATASET_MARKERS = ("dataset_dict.json", "state.json")


class IngestError(Exception):
    """A problem with an input as a whole; the message names the file (and line) and what to do."""


@dataclass(frozen=True)
class Source:
    """One input to read: a file, a save_to_disk folder, or a hub dataset."""

    name: str  # what records carry as their ``source``
    kind: str  # jsonl | json | csv | parquet | datasets | hf
    spec: SourceSpec

    @property
    def path(self) -> Path:
        return Path(self.name)


@dataclass
class RawBatch:
    """A chunk of one source: the rows that parsed, as one or more tables, and those that did not.

    Rows whose values disagree in type need separate tables; ``positions`` then says where
    each table's rows sit in the chunk, and ``locations``/``original`` follow chunk order.
    """

    tables: list[pa.Table]
    locations: pa.Array | None  # one per table row, in chunk order
    original: Callable[[int], Any]  # row i in chunk order, as the user wrote it
    failures: list[tuple[str, RowError, Any]] = field(default_factory=list)  # (location, error, raw text)
    positions: list[np.ndarray] | None = None  # None: a single table already in chunk order

    @property
    def parsed(self) -> int:
        return sum(t.num_rows for t in self.tables)

    @property
    def rows(self) -> int:
        return self.parsed + len(self.failures)


def _is_dataset_folder(path: Path) -> bool:
    return any((path / marker).is_file() for marker in DATASET_MARKERS)


def expand_sources(specs: list[SourceSpec]) -> list[Source]:
    """Each configured input; a plain folder contributes every supported file (and
    save_to_disk folder) under it, sorted."""
    sources: list[Source] = []
    for spec in specs:
        if spec.path.startswith(HF_PREFIX):
            sources.append(Source(spec.path, "hf", spec))
            continue
        path = Path(spec.path).expanduser()
        if path.is_dir():
            if _is_dataset_folder(path):
                sources.append(Source(str(path), "datasets", spec))
                continue
            found = _scan(path)
            if not found:
                raise IngestError(f"{path}: folder has no {', '.join(FILE_SUFFIXES)} files or datasets save_to_disk folders")
            sources.extend(Source(str(p), kind, spec) for p, kind in found)
        elif path.is_file():
            if path.suffix.lower() not in FILE_SUFFIXES:
                raise IngestError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(FILE_SUFFIXES)}, a save_to_disk folder or hf:NAME")
            sources.append(Source(str(path), path.suffix.lower().lstrip("."), spec))
        else:
            raise IngestError(f"{path}: no such file or folder (data.sources)")
    return sources


def _scan(folder: Path) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            found.extend([(child, "datasets")] if _is_dataset_folder(child) else _scan(child))
        elif child.suffix.lower() in FILE_SUFFIXES:
            found.append((child, child.suffix.lower().lstrip(".")))
    return found


# Fingerprints ---------------------------------------------------------------------------

_file_hashes: dict[tuple[str, int, int], str] = {}


def file_key(path: Path) -> tuple[str, int, int]:
    """What a remembered hash of a file is valid for: its resolved path, size and modification time."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def remember_sha256(path: Path, key: tuple[str, int, int], sha256: str) -> None:
    """Keep a file's sha256 digested during another pass over it (a whole read, a shard plan),
    so that :func:`file_sha256` needs no pass of its own; unless the file changed since ``key``."""
    if file_key(path) == key:
        _file_hashes[key] = sha256


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    key = file_key(path)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def source_fingerprint(source: Source) -> str | None:
    """What identifies a source's content: a file's sha256, a folder's file hashes, or a hub
    dataset pinned to a revision (None: an unpinned hub dataset can change under us)."""
    if source.kind == "hf":
        spec = source.spec
        return f"{spec.path}:{spec.config}@{spec.revision}" if spec.revision else None
    path = source.path
    if source.kind == "datasets":
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}={file_sha256(file)}\n".encode())
        return digest.hexdigest()
    return file_sha256(path)

