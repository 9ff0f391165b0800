"""Content-addressed dataset versions: Parquet per split plus a manifest, committed whole.

A version is built in a local staging folder by :class:`~fragua.data.version_writer.VersionWriter` (row batches are
streamed into one Parquet file per split while a digest of the content is kept) and then
committed to a :class:`DatasetStore` under its id. The id is a sha256 of the records, in
stored order, and the split settings: the same data ingested the same way gets the same
id, and committing it again keeps the existing copy. The store is an interface so that a
remote backend (S3) can take the local directory's place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from fragua.data.records import Record
from fragua.data.splits import SPLITS
from fragua.data.version_writer import SCHEMA, VersionWriter, records_table
from fragua.settings import Settings
from fragua.storage import open_store
from fragua.storage.store import NotFound, ObjectStore, PreconditionFailed

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"


class SourceReport(BaseModel):
    path: str
    sha256: str | None = Field(None, description="Content hash of the file or folder (a hub dataset: name, config and revision).")
    format: str
    rows: int = Field(description="Rows read from the source.")
    kept: int
    duplicates: int = Field(description="Exact duplicates after normalisation, counted and not kept.")
    quarantined: int
    reasons: dict[str, int] = Field(default_factory=dict, description="Quarantined rows per reason kind.")
    unanswerable: int = Field(0, description="SQuAD v2 questions without an answer (kept or quarantined per data.squad_unanswerable).")


class DatasetManifest(BaseModel):
    id: str
    path: str
    created_at: str
    counts: dict[str, int] = Field(description="Records per split.")
    domains: dict[str, dict[str, int]] = Field(description="Records per domain and split.")
    origins: dict[str, int] = Field(default_factory=dict, description="Records per origin (original or strategy).")
    sources: list[SourceReport] = Field(default_factory=list)
    quarantined: int = 0
    quarantine_file: str | None = None
    rejected: dict[str, int] = Field(default_factory=dict, description="Quarantined rows per reason kind, all sources.")
    duplicates: int = Field(0, description="Exact duplicates dropped, all sources.")
    parent: str | None = Field(None, description="Dataset version this one was derived from (expansion).")
    settings: dict[str, Any] = Field(default_factory=dict)
    stats_file: str | None = Field(None, description="stats.json: token lengths per domain and counts.")
    plot_file: str | None = Field(None, description="stats.png: length histogram per domain and rows per split.")
    warnings: list[str] = Field(default_factory=list, description="Things worth a look, e.g. a domain without validation rows.")
    report: dict[str, Any] = Field(default_factory=dict, description="Stage-specific details, e.g. expansion per strategy.")

    def split_path(self, split: str) -> Path:
        return Path(self.path) / f"{split}.parquet"


# Storage ----------------------------------------------------------------------------------


class DatasetStore(ABC):
    """Where dataset versions live. Versions are built in a local staging folder and
    committed whole; a remote store uploads on commit and downloads on open."""

    @abstractmethod
    def describe(self) -> str:
        """Where versions live, for messages."""

    @abstractmethod
    def location(self, ident: str) -> str:
        """Where version ``ident`` lives (a folder or URL), recorded in its manifest."""

    @abstractmethod
    def staging(self) -> Path:
        """A fresh local folder to build one version in."""

    @abstractmethod
    def commit(self, staging: Path, ident: str) -> Path:
        """Publish the staged version as ``ident`` (keeping an existing copy: same id, same
        content) and return the local folder holding it; the staging folder is consumed."""

    @abstractmethod
    def open(self, ident: str) -> Path | None:
        """Local folder of version ``ident`` (fetched if remote), or None if it does not exist."""

    @abstractmethod
    def ids(self) -> list[str]:
        """Ids of the stored versions, oldest first."""

    @abstractmethod
    def instance(self) -> str:
        """A token that changes when the store is wiped and recreated (for cache keys)."""

    @abstractmethod
    def remember(self, key: str, ident: str) -> None:
        """Record that ingest inputs ``key`` produced version ``ident``."""

    @abstractmethod
    def recall(self, key: str) -> str | None: ...

    def manifest(self, ident: str, *, fetch: bool = True) -> DatasetManifest:
        """The version's manifest; ``fetch=False`` leaves a remote version's files where they are (streaming)."""
        folder = self.open(ident)
        if folder is None:
            raise FileNotFoundError(f"no dataset version {ident!r} in {self.describe()}")
        return load_manifest(folder)

    def find(self, ident: str | None, *, fetch: bool = True) -> DatasetManifest:
        """A version by id (or unique id prefix); None means the newest."""
        ids = self.ids()
        if ident is None:
            if not ids:
                raise FileNotFoundError(f"no dataset versions under {self.describe()}; run `fragua ingest` first")
            return self.manifest(ids[-1], fetch=fetch)
        matches = [i for i in ids if i.startswith(ident)]
        if len(matches) != 1:
            found = "no" if not matches else "several"
            raise FileNotFoundError(f"{found} dataset versions match {ident!r} under {self.describe()}")
        return self.manifest(matches[0], fetch=fetch)


class LocalDatasetStore(DatasetStore):
    """Versions as folders ``<root>/<id>``; a commit is an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def location(self, ident: str) -> str:
        return str(self.root / ident)

    def staging(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def commit(self, staging: Path, ident: str) -> Path:
        target = self.root / ident
        try:
            if not (target / MANIFEST).is_file():
                try:
                    os.rename(staging, target)
                except OSError:
                    # Another writer stored the same content first; theirs is identical.
                    if not (target / MANIFEST).is_file():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def open(self, ident: str) -> Path | None:
        folder = self.root / ident
        return folder if (folder / MANIFEST).is_file() else None

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        folders = [p for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()]
        return [p.name for p in sorted(folders, key=lambda p: ((p / MANIFEST).stat().st_mtime, p.name))]

    def instance(self) -> str:
        marker = self.root / ".store-id"
        if not marker.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            candidate = self.root / f".store-id-{uuid.uuid4().hex}"
            candidate.write_text(uuid.uuid4().hex)
            try:
                os.link(candidate, marker)  # create-only: concurrent first uses agree on one token
            except FileExistsError:
                pass
            finally:
                candidate.unlink()
        return marker.read_text().strip()

    def remember(self, key: str, ident: str) -> None:
        index = self.root / ".ingest-keys"
        index.mkdir(parents=True, exist_ok=True)
        (index / key).write_text(ident)

    def recall(self, key: str) -> str | None:
        entry = self.root / ".ingest-keys" / key
        return entry.read_text().strip() if entry.is_file() else None


class ObjectDatasetStore(DatasetStore):
    """Versions as objects ``<prefix>/<id>/<file>`` in an :class:`~fragua.storage.ObjectStore`
    (the registry's S3 bucket or folder: ``data.store = "registry"``); opened versions are
    cached in a local folder.

    The manifest is uploaded last with a create-only write, so a version without one does
    not exist and two writers of the same content cannot both publish it."""

    def __init__(self, objects: ObjectStore, cache: Path, prefix: str = "datasets") -> None:
        self.objects = objects
        self.cache = Path(cache)
        self.prefix = prefix.strip("/")

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def describe(self) -> str:
        return f"{self.objects.describe()}/{self.prefix}"

    def location(self, ident: str) -> str:
        return f"{self.describe()}/{ident}"

    def staging(self) -> Path:
        self.cache.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.cache))

    def commit(self, staging: Path, ident: str) -> Path:
        try:
            if not self.objects.exists(self._key(ident, MANIFEST)):
                for path in sorted(staging.iterdir()):
                    if path.name != MANIFEST:
                        self.objects.put_file(self._key(ident, path.name), path)
                try:
                    self.objects.put_bytes(self._key(ident, MANIFEST), (staging / MANIFEST).read_bytes(), if_none_match=True)
                except PreconditionFailed:
                    pass  # another writer published the same content first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        folder = self.open(ident)
        assert folder is not None
        return folder

    def open(self, ident: str) -> Path | None:
        if not self.objects.exists(self._key(ident, MANIFEST)):
            return None
        folder = self.cache / ident
        if not (folder / MANIFEST).is_file():
            self.cache.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{ident}-", dir=self.cache))
            for key in self.objects.list_keys(self._key(ident) + "/"):
                self.objects.get_file(key, partial / key.rsplit("/", 1)[-1])
            try:
                os.rename(partial, folder)
            except OSError:
                shutil.rmtree(partial, ignore_errors=True)
        return folder

    def manifest(self, ident: str, *, fetch: bool = True) -> DatasetManifest:
        if fetch:
            return super().manifest(ident)
        try:
            return DatasetManifest.model_validate_json(self.objects.get_bytes(self._key(ident, MANIFEST))[0])
        except NotFound:
            raise FileNotFoundError(f"no dataset version {ident!r} in {self.describe()}") from None

    def ids(self) -> list[str]:
        manifests = [k for k in self.objects.list_keys(self.prefix + "/") if k.endswith(f"/{MANIFEST}") and k.count("/") == self.prefix.count("/") + 2]
        loaded = [DatasetManifest.model_validate_json(self.objects.get_bytes(k)[0]) for k in manifests]
        return [m.id for m in sorted(loaded, key=lambda m: (m.created_at, m.id))]

    def instance(self) -> str:
        key = self._key(".store-id")
        try:
            self.objects.put_bytes(key, uuid.uuid4().hex.encode(), if_none_match=True)
        except PreconditionFailed:
            pass
        return self.objects.get_bytes(key)[0].decode()

    def remember(self, key: str, ident: str) -> None:
        self.objects.put_bytes(self._key(".ingest-keys", key), ident.encode())

    def recall(self, key: str) -> str | None:
        try:
            return self.objects.get_bytes(self._key(".ingest-keys", key))[0].decode()
        except NotFound:
            return None


# Writing --------------------------------------------------------------------------------


def write_dataset_version(
    store: DatasetStore | Path,
    records: list[Record],
    *,
    quarantine: list[dict[str, Any]],
    sources: list[SourceReport],
    settings: dict[str, Any],
    parent: str | None = None,
    report: dict[str, Any] | None = None,
) -> DatasetManifest:
    """Store in-memory records (e.g. an expanded train split) as a version (``store``: a
    DatasetStore, or the folder of a local one)."""
    store = store if isinstance(store, DatasetStore) else LocalDatasetStore(store)
    staging = store.staging()
    try:
        writer = VersionWriter(staging)
        table = records_table(records)
        for split in SPLITS:
            writer.write(split, table.filter(pc.equal(table.column("split"), split)))
        writer.close()
        if quarantine:
            with (staging / QUARANTINE).open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in quarantine)
        ident = writer.dataset_id({"parent": parent, "settings": settings})
        manifest = build_manifest(
            ident, store.location(ident), writer, sources=sources, settings=settings, parent=parent, report=report or {},
            quarantined=len(quarantine), rejected=dict(Counter(q.get("kind", "invalid_value") for q in quarantine)),
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_manifest(store.commit(staging, ident))


def build_manifest(ident: str, location: str, writer: VersionWriter, **fields: Any) -> DatasetManifest:
    quarantined = fields.pop("quarantined", 0)
    return DatasetManifest(
        id=ident,
        path=location,
        created_at=datetime.now(timezone.utc).isoformat(),
        counts=dict(writer.counts),
        domains={d: dict(c) for d, c in sorted(writer.domains.items())},
        origins=dict(writer.origins),
        quarantined=quarantined,
        quarantine_file=f"{location}/{QUARANTINE}" if quarantined else None,
        **fields,
    )


# Reading --------------------------------------------------------------------------------


def load_manifest(path: Path) -> DatasetManifest:
    """A version's manifest, its file paths pointing into ``path`` (where it was read from)."""
    folder = Path(path)
    manifest = DatasetManifest.model_validate_json((folder / MANIFEST).read_text())
    manifest.path = str(folder)
    for name in ("quarantine_file", "stats_file", "plot_file"):
        if getattr(manifest, name):
            setattr(manifest, name, str(folder / Path(getattr(manifest, name)).name))
    return manifest


def load_stats(manifest: DatasetManifest) -> dict[str, Any] | None:
    """The version's stats.json (token lengths per domain), if it has one."""
    if not manifest.stats_file or not Path(manifest.stats_file).is_file():
        return None
    return json.loads(Path(manifest.stats_file).read_text(encoding="utf-8"))


def find_dataset(root: Path, ident: str | None) -> DatasetManifest:
    """A dataset by id (or unique id prefix) in the local store at ``root``; None means the newest."""
    return LocalDatasetStore(root).find(ident)


def load_table(manifest: DatasetManifest, split: str, domains: list[str] | None = None) -> pa.Table:
    """One split as an Arrow table, optionally only some domains (the per-domain view)."""
    path = manifest.split_path(split)
    if not path.is_file():
        return SCHEMA.empty_table()
    if domains is not None:
        unknown = sorted(set(domains) - set(manifest.domains))
        if unknown:
            raise ValueError(f"dataset {manifest.id} has no domain {', '.join(map(repr, unknown))}; it has {', '.join(manifest.domains)}")
        return pq.read_table(path, filters=[("domain", "in", list(domains))])
    return pq.read_table(path)


def record_from_row(row: dict[str, Any]) -> Record:
    """A stored split's row (``meta`` kept as JSON text) as a Record."""
    return Record.model_validate({**row, "meta": json.loads(row["meta"]) if row["meta"] else {}})


def load_records(manifest: DatasetManifest, split: str, domains: list[str] | None = None) -> list[Record]:
    return [record_from_row(row) for row in load_table(manifest, split, domains).to_pylist()]


def load_dataset_view(manifest: DatasetManifest, split: str, domains: list[str] | None = None) -> Any:
    """One split (optionally some domains) as a ``datasets.Dataset`` for training or evaluation code."""
    import datasets

    return datasets.Dataset(load_table(manifest, split, domains))


def open_dataset_store(settings: Settings) -> DatasetStore:
    """Where dataset versions live (data.store): work_dir/datasets, or the registry's storage."""
    if settings.data.store == "registry":
        return ObjectDatasetStore(open_store(settings), settings.work_path / "cache" / "datasets")
    return LocalDatasetStore(settings.datasets_path)
