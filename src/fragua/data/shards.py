"""Ingest's row-local work cut into shards that any executor (threads, Dask, Ray) can run.

A shard is a piece of one source whose rows can be prepared without seeing the others: a
byte range of a JSONL file cut at line starts (its first line number counted up front, so
locations match a read of the whole file), a run of Parquet row groups, or a whole file of
another kind. Shards are prepared anywhere and merged in plan order by the calling process,
which does the order-dependent half (dedupe, quarantine, Parquet, the content digest): the
dataset version id is the same whatever ran the shards, and the same as a plain ingest.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

import pyarrow as pa

from fragua.data.prepare import prepare
from fragua.data.readers import jsonl_range, open_parquet, parquet_row_groups, read_batches
from fragua.data.sources import RawBatch, Source, file_key, remember_sha256
from fragua.settings import DataSettings
from fragua.settings.data import DEFAULT_MAX_LINE_BYTES

READ_CHUNK = 8 << 20


@dataclass(frozen=True)
class Shard:
    source: Source
    index: int  # within its source
    start: int = 0  # JSONL: first byte; Parquet: first row group
    stop: int | None = None  # JSONL: end byte; Parquet: end row group; None: to the end
    first: int = 1  # JSONL: number of the line at start; Parquet: number of the first row

    def describe(self) -> str:
        return f"{self.source.name} shard {self.index}"


@dataclass(frozen=True)
class ShardWork:
    """One shard to prepare, with what preparing needs (picklable, for remote workers)."""

    shard: Shard
    format: str | None  # None: no row of the source parsed as a JSON object
    settings: DataSettings


@dataclass
class PortableBatch:
    """What merging needs of a read batch, without the raw bytes it was parsed from:
    row count, locations, unparsable lines, and the original of every row that may be quarantined."""

    rows: int
    locations: pa.Array | None
    failures: list[tuple[str, Any, Any]]
    originals: dict[int, Any] = field(default_factory=dict)

    def original(self, row: int) -> Any:
        return self.originals[row]


def _jsonl_cuts(source: Source, shard_bytes: int) -> list[tuple[int, int]]:
    """(byte offset, line number) of each shard start: one pass that also keeps the file's sha256."""
    key = file_key(source.path)
    digest = hashlib.sha256()
    cuts = [(0, 1)]
    offset, lines, target = 0, 0, shard_bytes
    with source.path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
            while target < offset + len(chunk):
                at = chunk.find(b"\n", max(0, target - offset))
                if at < 0:
                    break  # the line goes on into the next chunk: cut after it there
                cut = offset + at + 1
                cuts.append((cut, lines + chunk.count(b"\n", 0, at + 1) + 1))
                target = cut + shard_bytes
            lines += chunk.count(b"\n")
            offset += len(chunk)
    remember_sha256(source.path, key, digest.hexdigest())
    return [c for c in cuts if c[0] < offset or c[0] == 0]


def plan_shards(source: Source, shard_bytes: int) -> list[Shard]:
    if source.kind == "jsonl":
        cuts = _jsonl_cuts(source, shard_bytes)
        ends = [c[0] for c in cuts[1:]] + [None]
        return [Shard(source, i, start, stop, line) for i, ((start, line), stop) in enumerate(zip(cuts, ends))]
    if source.kind == "parquet":
        metadata = open_parquet(source).metadata
        shards, group, first = [], 0, 0
        while group < metadata.num_row_groups:
            start, rows, size = group, 0, 0
            while group < metadata.num_row_groups and (group == start or size < shard_bytes):
                size += metadata.row_group(group).total_byte_size
                rows += metadata.row_group(group).num_rows
                group += 1
            shards.append(Shard(source, len(shards), start, group, first))
            first += rows
        return shards or [Shard(source, 0, 0, None, 0)]
    return [Shard(source, 0)]


def shard_batches(shard: Shard, batch_size: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[RawBatch]:
    source = shard.source
    if source.kind == "jsonl":
        return jsonl_range(source, batch_size, shard.start, shard.stop, shard.first, max_line_bytes)
    if source.kind == "parquet" and shard.stop is not None:
        return parquet_row_groups(source, batch_size, list(range(shard.start, shard.stop)), shard.first)
    return read_batches(source, batch_size, max_line_bytes)


def portable(raw: RawBatch, rows: list[int]) -> PortableBatch:
    return PortableBatch(raw.rows, raw.locations, raw.failures, {row: raw.original(row) for row in rows})


def prepare_shard(work: ShardWork) -> list[Any]:
    """The shard's batches, each prepared (a :class:`~fragua.data.prepare.Prepared`) or, without parsed rows, a
    PortableBatch of its failures; raw bytes are dropped so the result travels between processes."""
    results: list[Any] = []
    for raw in shard_batches(work.shard, work.settings.batch_size, work.settings.max_line_bytes):
        if not raw.tables or work.format is None:
            results.append(portable(raw, []))
            continue
        prepared = prepare(raw, work.format, work.shard.source, work.settings)
        # Rows that can be quarantined: those with an error, and with near-dedupe any row.
        rows = range(raw.parsed) if work.settings.near_dedupe else (~prepared.errors.ok).nonzero()[0].tolist()
        prepared.raw = portable(raw, list(rows))
        results.append(prepared)
    return results


ShardMapper = Callable[[Iterator[ShardWork]], Iterator[list[Any]]]
W = TypeVar("W")
R = TypeVar("R")


class Pending(Protocol[R]):
    def result(self) -> R: ...


def pack(value: Any) -> bytes:
    """``value`` as one opaque blob: cheap for task runners to hash, send and store, unlike many small objects."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> Any:
    """What :func:`pack` packed (only ever blobs this process's own shards made)."""
    return pickle.loads(blob)


def in_order(submit: Callable[[W], Pending[R]], works: Iterable[W], in_flight: int) -> Iterator[R]:
    """Results of ``works`` in their order, at most ``in_flight`` submitted and not yet taken:
    shards run anywhere while the caller merges them one by one, with bounded memory."""
    pending: deque[Pending[R]] = deque()
    for work in works:
        pending.append(submit(work))
        while len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def threaded_mapper(workers: int, in_flight: int) -> ShardMapper:
    """Prepare shards on a thread pool of this process, results in submission order."""

    def run(works: Iterator[ShardWork]) -> Iterator[list[Any]]:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fragua-shard") as pool:
            yield from in_order(lambda work: pool.submit(prepare_shard, work), works, in_flight)

    return run
