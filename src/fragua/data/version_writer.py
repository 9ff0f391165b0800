"""The Parquet files of a dataset version: one schema, and a writer that streams batches into them while digesting the content.

The digest depends on the values in order, not on batch boundaries, so the version id
(:meth:`VersionWriter.dataset_id`) does not depend on how ingest batched or sharded the work.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fragua.data.records import Record
from fragua.data.splits import SPLITS

FORMAT_VERSION = "fragua-dataset/2"

SCHEMA = pa.schema(
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
# Long free text compresses but does not dictionary-encode well; labels do.
_DICTIONARY_COLUMNS = ["domain", "source", "split", "origin", "messages.list.element.role"]


class _ContentDigest:
    """Running digests of a version's values, one per part (null positions, lengths, bytes)
    of each column: the result depends on the values in order, not on batch boundaries."""

    def __init__(self) -> None:
        self.parts: dict[str, Any] = defaultdict(hashlib.sha256)
        self.seen: Counter[str] = Counter()  # values so far per column path, for null positions

    def update(self, path: str, array: pa.Array) -> None:
        if array.null_count:
            nulls = np.flatnonzero(~pc.is_valid(array).to_numpy(zero_copy_only=False)) + self.seen[path]
            self.parts[f"{path}/nulls"].update(nulls.astype("<i8").tobytes())
        self.seen[path] += len(array)
        kind = array.type
        if pa.types.is_string(kind) or pa.types.is_list(kind):
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
            self.parts[f"{path}/lengths"].update(np.diff(offsets).tobytes())
            if pa.types.is_list(kind):
                self.update(f"{path}[]", array.values.slice(offsets[0], offsets[-1] - offsets[0]))
            elif offsets[-1] > offsets[0]:
                self.parts[f"{path}/bytes"].update(memoryview(array.buffers()[2])[offsets[0]: offsets[-1]])
        elif pa.types.is_struct(kind):
            for index in range(kind.num_fields):
                self.update(f"{path}.{kind.field(index).name}", array.field(index))  # field() applies the offset
        else:
            raise TypeError(f"cannot digest a {kind} column")

    def digest(self) -> bytes:
        combined = hashlib.sha256()
        for part in sorted(self.parts):
            combined.update(f"{part}=".encode() + self.parts[part].digest() + b"\n")
        return combined.digest()


def _value_counts(values: pa.ChunkedArray) -> dict[str, int]:
    counted = pc.value_counts(values)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))


class VersionWriter:
    """Streams record batches into ``<staging>/<split>.parquet`` while digesting the content."""

    def __init__(self, folder: Path, compression: str = "snappy") -> None:
        self.folder = folder
        self.compression = compression
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._digest = _ContentDigest()
        self.counts: Counter[str] = Counter()
        self.domains: dict[str, Counter[str]] = defaultdict(Counter)
        self.origins: Counter[str] = Counter()

    def write(self, split: str, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.select(SCHEMA.names).cast(SCHEMA)
        if split not in self._writers:
            self._writers[split] = pq.ParquetWriter(
                self.folder / f"{split}.parquet", SCHEMA, use_dictionary=_DICTIONARY_COLUMNS, compression=self.compression
            )
        self._writers[split].write_table(table)
        for name in SCHEMA.names:
            for chunk in table.column(name).chunks:
                self._digest.update(f"{split}/{name}", chunk)
        self.counts[split] += table.num_rows
        for domain, count in _value_counts(table.column("domain")).items():
            self.domains[domain][split] += count
        self.origins.update(_value_counts(table.column("origin")))

    def close(self) -> None:
        for split in ("train", "validation"):
            if split not in self._writers:
                pq.write_table(SCHEMA.empty_table(), self.folder / f"{split}.parquet", compression=self.compression)
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def dataset_id(self, header: dict[str, Any]) -> str:
        """sha256 of the format version, ``header`` (split settings, parent) and the records."""
        digest = hashlib.sha256(FORMAT_VERSION.encode())
        digest.update(json.dumps(header, sort_keys=True).encode())
        digest.update(json.dumps({split: self.counts[split] for split in SPLITS}).encode())
        digest.update(self._digest.digest())
        return digest.hexdigest()[:20]


def records_table(records: Iterable[Record]) -> pa.Table:
    rows = []
    for record in records:
        row = record.model_dump(mode="json")
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False, sort_keys=True)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)
