"""Content-addressed dataset versions: Parquet per split plus a manifest, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from .records import Record

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("origin", pa.string()),
        # Free-form per row, so stored as JSON text to keep one Parquet schema.
        ("meta", pa.string()),
    ]
)


class SourceReport(BaseModel):
    path: str
    sha256: str
    format: str
    rows: int = Field(description="Rows read from the file.")
    kept: int
    duplicates: int
    quarantined: int


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
    parent: str | None = Field(None, description="Dataset version this one was derived from (expansion).")
    settings: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict, description="Stage-specific details, e.g. expansion per strategy.")

    def split_path(self, split: str) -> Path:
        return Path(self.path) / f"{split}.parquet"


def record_row(record: Record) -> dict[str, Any]:
    row = record.model_dump(mode="json")
    row["meta"] = json.dumps(row["meta"], ensure_ascii=False, sort_keys=True)
    return row


def dataset_id(records: Iterable[Record], parent: str | None = None) -> str:
    """sha256 of the canonical records (their split included) and the parent version."""
    digest = hashlib.sha256()
    digest.update(f"parent={parent}\n".encode())
    for record in sorted(records, key=lambda r: r.id):
        digest.update(json.dumps(record_row(record), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:20]


def write_dataset_version(
    root: Path,
    records: list[Record],
    *,
    quarantine: list[dict[str, Any]],
    sources: list[SourceReport],
    settings: dict[str, Any],
    parent: str | None = None,
    report: dict[str, Any] | None = None,
) -> DatasetManifest:
    """Store records under ``root/<id>``; an existing id is returned as is (same content)."""
    ident = dataset_id(records, parent)
    target = root / ident
    if (target / MANIFEST).is_file():
        return load_manifest(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{ident}-", dir=root))
    try:
        for split in SPLITS:
            rows = [record_row(r) for r in records if r.split == split]
            if rows or split != "test":
                pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), staging / f"{split}.parquet")
        quarantine_file = None
        if quarantine:
            quarantine_file = target / "quarantine.jsonl"
            with (staging / "quarantine.jsonl").open("w", encoding="utf-8") as handle:
                for item in quarantine:
                    handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        domains: dict[str, Counter] = defaultdict(Counter)
        for record in records:
            domains[record.domain][record.split] += 1
        manifest = DatasetManifest(
            id=ident,
            path=str(target),
            created_at=datetime.now(timezone.utc).isoformat(),
            counts=dict(Counter(r.split for r in records)),
            domains={d: dict(c) for d, c in sorted(domains.items())},
            origins=dict(Counter(r.origin for r in records)),
            sources=sources,
            quarantined=len(quarantine),
            quarantine_file=str(quarantine_file) if quarantine_file else None,
            parent=parent,
            settings=settings,
            report=report or {},
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            # Another writer stored the same content first; theirs is identical.
            if not (target / MANIFEST).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return load_manifest(target)


def load_manifest(path: Path) -> DatasetManifest:
    return DatasetManifest.model_validate_json((Path(path) / MANIFEST).read_text())


def find_dataset(root: Path, ident: str | None) -> DatasetManifest:
    """A dataset by id (or unique id prefix); None means the newest one."""
    candidates = sorted(
        (p for p in root.glob("*") if (p / MANIFEST).is_file()), key=lambda p: (p / MANIFEST).stat().st_mtime
    ) if root.is_dir() else []
    if ident is None:
        if not candidates:
            raise FileNotFoundError(f"no dataset versions under {root}; run `fragua ingest` first")
        return load_manifest(candidates[-1])
    matches = [p for p in candidates if p.name.startswith(ident)]
    if len(matches) != 1:
        found = "no" if not matches else "several"
        raise FileNotFoundError(f"{found} dataset versions match {ident!r} under {root}")
    return load_manifest(matches[0])


def load_records(manifest: DatasetManifest, split: str) -> list[Record]:
    path = manifest.split_path(split)
    if not path.is_file():
        return []
    rows = pq.read_table(path).to_pylist()
    records = []
    for row in rows:
        row["meta"] = json.loads(row["meta"]) if row["meta"] else {}
        records.append(Record.model_validate(row))
    return records
