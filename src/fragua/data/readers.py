"""Per-format readers: one source -> batches of rows as Arrow tables, each row with its location.

Readers stream: at most one batch of rows is in memory (JSON documents up to
``data.max_line_bytes`` are the exception: they are parsed whole; larger ones are streamed
element by element). No line, CSV field or list element longer than ``data.max_line_bytes`` is
ever held whole, so a file without newlines costs no more memory than a good one. Rows that
cannot be parsed come back as failures with their location and reason, and the rest of the
batch carries on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from fragua.data.formats.adapt import tables_from_rows
from fragua.data.formats.columnar import type_name
from fragua.data.json_documents import STREAM_READ, document_rows, load_document, streamed_list
from fragua.data.records import RowError
from fragua.data.sources import IngestError, RawBatch, Source, file_key, remember_sha256
from fragua.settings import HF_PREFIX
from fragua.settings.data import DEFAULT_MAX_LINE_BYTES

BOM = b"\xef\xbb\xbf"


# JSON lines -----------------------------------------------------------------------------


def parse_json_line(raw: bytes) -> dict[str, Any] | RowError:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return RowError(f"invalid UTF-8 at byte {bad.start}", "invalid_utf8")
        try:
            json.loads(text)
        except json.JSONDecodeError as bad:
            return RowError(f"invalid JSON: {bad.msg} at column {bad.colno}", "invalid_json")
        return RowError(f"invalid JSON: {exc}", "invalid_json")  # e.g. NaN or a lone surrogate
    if not isinstance(value, dict):
        return RowError(f"expected a JSON object, got {type_name(pa.infer_type([value]))}", "not_an_object")
    return value


def _line_locations(numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise("line ", pa.array(numbers).cast(pa.string()), "")


def _temporal(kind: pa.DataType) -> bool:
    if pa.types.is_temporal(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _temporal(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_temporal(f.type) for f in kind)
    return False


def _faithful(table: pa.Table) -> bool:
    """Whether Arrow's JSON reader kept what a JSON parser would: it passes invalid UTF-8
    through, turns ISO date strings into timestamps and accepts NaN, none of which we may
    do silently."""
    try:
        table.validate(full=True)
    except pa.ArrowInvalid:
        return False
    for column in table.columns:
        if _temporal(column.type):
            return False
        if pa.types.is_floating(column.type) and pc.any(pc.invert(pc.is_finite(column))).as_py():
            return False
    return True


def _rows_batch(rows: list[dict[str, Any]], locations: list[str], failures: list[tuple[str, RowError, Any]]) -> RawBatch:
    """Python rows -> a RawBatch (tables of type-compatible rows, in chunk order)."""
    tables, failed = tables_from_rows(rows)
    failures = failures + [(locations[i], error, rows[i]) for i, error in sorted(failed.items())]
    order = np.sort(np.concatenate([p for _, p in tables])).tolist() if tables else []
    return RawBatch(
        [t for t, _ in tables],
        pa.array([locations[i] for i in order], pa.string()),
        lambda i: rows[order[i]],
        failures,
        positions=[p for _, p in tables] if len(tables) > 1 else None,
    )


BYTES_PER_ROW = 512  # JSONL is read in blocks of about batch_size rows of this size


def _jsonl_block(block: memoryview, first_line: int, count: int) -> Iterator[RawBatch]:
    """Parse ``count`` whole lines with Arrow's JSON reader; lines it cannot take as they are
    (bad JSON, types that differ between rows) go through the line parser."""
    bounds: list[np.ndarray] = []

    def line(i: int) -> bytes:
        """Line i of the block, found without splitting the block into a million objects."""
        if not bounds:
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            bounds.append(np.concatenate([[0], newlines + 1]))
            bounds.append(np.concatenate([newlines, [len(block)]]))
        return bytes(block[bounds[0][i]: bounds[1][i]])

    try:
        table = pa_json.read_json(pa.BufferReader(pa.py_buffer(block)), read_options=pa_json.ReadOptions(block_size=max(1 << 20, len(block) // 4)))
        numbers = np.arange(first_line, first_line + count)
        if table.num_rows != count:  # Arrow skips blank lines: number the others
            numbers = np.array([first_line + i for i in range(count) if line(i).strip()], dtype=np.int64)
        if not len(numbers):
            return
        if table.num_rows == len(numbers) and _faithful(table):
            positions = numbers - first_line
            yield RawBatch([table], _line_locations(numbers), lambda i: orjson.loads(line(positions[i])))
            return
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        pass  # a bad line, or types that differ between rows: parse line by line below
    rows, locations, failures = [], [], []
    for number, text in enumerate(bytes(block).split(b"\n")[:count], start=first_line):
        if not text.strip():
            continue
        parsed = parse_json_line(text)
        if isinstance(parsed, RowError):
            failures.append((f"line {number}", parsed, text.decode("utf-8", "replace").rstrip("\r")))
        else:
            rows.append(parsed)
            locations.append(f"line {number}")
    if rows or failures:
        yield _rows_batch(rows, locations, failures)


def _jsonl(source: Source, batch_size: int, max_line_bytes: int) -> Iterator[RawBatch]:
    return jsonl_range(source, batch_size, max_line_bytes=max_line_bytes)


PREVIEW_BYTES = 200  # of an over-long line, what the quarantine keeps as its text


def _too_long(number: int, offset: int, length: int, preview: bytes, max_line_bytes: int) -> RawBatch:
    """An over-long line as a failure: where it starts, how long it is, its first bytes."""
    reason = (f"line of {length} bytes at byte offset {offset} is longer than data.max_line_bytes={max_line_bytes}; "
              "it was skipped unread: raise data.max_line_bytes to read it")
    text = preview[:PREVIEW_BYTES].decode("utf-8", "replace")
    return RawBatch([], None, lambda i: None, [(f"line {number}", RowError(reason, "line_too_long"), text)])


def _jsonl_lines(block: memoryview, first_line: int, count: int, offset: int, max_line_bytes: int) -> Iterator[RawBatch]:
    """As :func:`_jsonl_block`, with any line longer than ``max_line_bytes`` quarantined unparsed
    (``offset``: the block's position in the file). Only a block longer than that can hold one."""
    if len(block) <= max_line_bytes:
        yield from _jsonl_block(block, first_line, count)
        return
    newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(block)]])
    following = 0  # the first line not yet yielded
    for line in np.flatnonzero(ends - starts > max_line_bytes).tolist():
        if line > following:
            yield from _jsonl_block(block[starts[following]: ends[line - 1]], first_line + following, line - following)
        yield _too_long(first_line + line, offset + int(starts[line]), int(ends[line] - starts[line]),
                        bytes(block[starts[line]: starts[line] + PREVIEW_BYTES]), max_line_bytes)
        following = line + 1
    if following < count:
        yield from _jsonl_block(block[starts[following]:], first_line + following, count - following)


def jsonl_range(
    source: Source, batch_size: int, start: int = 0, stop: int | None = None, first_line: int = 1,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[RawBatch]:
    """The lines of bytes ``start:stop`` of a JSONL file (both at line starts; ``first_line``
    is the number of the line at ``start``), numbered as a read of the whole file numbers them.

    Memory stays bounded whatever the file holds: a line longer than ``max_line_bytes`` is
    never held whole; it is skipped to its newline and comes back as a ``line_too_long`` failure."""
    size = max(1 << 20, batch_size * BYTES_PER_ROW)
    whole = start == 0 and stop is None
    key = file_key(source.path)
    digest = hashlib.sha256()  # the manifest's file hash, without a second pass over the file
    with source.path.open("rb") as handle:
        handle.seek(start)
        left = stop - start if stop is not None else None
        pending = b""
        offset = start  # of pending's first byte in the file
        skipping: tuple[int, bytes] | None = None  # an over-long line being skipped: its offset and first bytes
        while True:
            chunk = handle.read(size if left is None else min(size, left))
            if left is not None:
                left -= len(chunk)
            if whole:
                digest.update(chunk)
            at_end = not chunk
            if skipping is not None:
                newline = chunk.find(b"\n")
                if newline < 0 and not at_end:
                    offset += len(chunk)
                    continue
                length = offset + max(newline, 0) - skipping[0]  # without its newline
                yield _too_long(first_line, skipping[0], length, skipping[1], max_line_bytes)
                first_line += 1
                offset += newline + 1
                chunk = chunk[newline + 1:]
                skipping = None
            data = pending + chunk if pending else chunk
            if not data:
                if not at_end:
                    continue  # the skipped line ended with its chunk
                if whole:
                    remember_sha256(source.path, key, digest.hexdigest())
                return
            end = len(data) if at_end else data.rfind(b"\n") + 1
            if end:
                skip = len(BOM) if first_line == 1 and data.startswith(BOM) else 0
                count = data.count(b"\n", skip, end) + (not data.endswith(b"\n", skip, end))
                # Whole lines, without their final newline: a view, not a copy.
                block = memoryview(data)[skip: end - 1 if data.endswith(b"\n", skip, end) else end]
                yield from _jsonl_lines(block, first_line, count, offset + skip, max_line_bytes)
                first_line += count
                offset += end
            pending = data[end:]
            if len(pending) > max_line_bytes:  # a line longer than allowed: skip the rest of it unread
                skipping = (offset, pending[:PREVIEW_BYTES])
                offset += len(pending)
                pending = b""


# JSON documents (read by fragua.data.json_documents) and other Python rows ---------------


def _python_batches(located: Iterator[tuple[str, Any]], batch_size: int) -> Iterator[RawBatch]:
    while chunk := list(islice(located, batch_size)):
        rows, locations, failures = [], [], []
        for location, value in chunk:
            if isinstance(value, RowError):
                failures.append((location, value, None))
            else:
                rows.append(value)
                locations.append(location)
        yield _rows_batch(rows, locations, failures)


def _json(source: Source, batch_size: int, max_line_bytes: int) -> Iterator[RawBatch]:
    """A document up to ``max_line_bytes`` is loaded whole (any layout); a larger one is streamed as a list of rows."""
    path = source.path
    if path.stat().st_size <= max_line_bytes:
        yield from _python_batches(document_rows(path, load_document(path)), batch_size)
    else:
        yield from _python_batches(streamed_list(path, max_line_bytes), batch_size)


# CSV ------------------------------------------------------------------------------------


def _csv_value(value: str) -> Any:
    """CSV cells holding JSON lists/objects (messages, choices) are decoded; other cells stay text."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


class _LineTooLong(Exception):
    def __init__(self, number: int, length: int, max_line_bytes: int) -> None:
        super().__init__(f"line of {length} characters is longer than data.max_line_bytes={max_line_bytes}; "
                         "it was skipped unread: raise data.max_line_bytes to read it")
        self.number = number


class _BoundedLines:
    """The lines of a text file for :mod:`csv`, none held longer than ``limit`` characters: a
    longer one is skipped to its end and raises :class:`_LineTooLong`, after which reading goes on."""

    def __init__(self, handle: io.TextIOWrapper, limit: int) -> None:
        self.handle = handle
        self.limit = limit
        self.number = 0  # physical lines read, the skipped ones included

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self.handle.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) > self.limit and line[-1] not in "\r\n":
            length = len(line)
            while (rest := self.handle.readline(STREAM_READ)) and rest[-1] not in "\r\n":
                length += len(rest)
            length += len(rest.rstrip("\r\n"))
            raise _LineTooLong(self.number, length, self.limit)
        return line


def _csv_rows(path: Path, max_line_bytes: int) -> Iterator[tuple[str, Any]]:
    # csv's limit on one (possibly multi-line, quoted) field is process-wide; every CSV read sets it.
    csv.field_size_limit(max_line_bytes)
    handle = io.TextIOWrapper(path.open("rb"), encoding="utf-8-sig", errors="strict", newline="")
    lines = _BoundedLines(handle, max_line_bytes)
    reader = csv.DictReader(lines)
    try:
        try:
            _check_delimiter(path, reader.fieldnames or [])
        except (_LineTooLong, csv.Error) as exc:
            raise IngestError(f"{path}: line 1 (the header): {exc}") from exc
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except _LineTooLong as exc:
                yield f"line {exc.number}", RowError(str(exc), "line_too_long")
                continue
            except csv.Error as exc:
                yield f"line {lines.number}", RowError(f"invalid CSV: {exc}", "invalid_value")
                continue
            location = f"line {lines.number}"
            if None in row:
                yield location, RowError(f"more fields than the {len(reader.fieldnames or [])} columns in the header", "invalid_value")
                continue
            yield location, {k: _csv_value(v) for k, v in row.items() if v is not None}
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 after line {lines.number} ({exc.reason}); save it as UTF-8") from exc
    finally:
        handle.close()


def _check_delimiter(path: Path, header: list[str]) -> None:
    """A header read as one column that holds another delimiter: the file is not comma-separated.
    No format has a single column, so saying so at once beats a confusing per-row error."""
    if len(header) != 1:
        return
    found = next((name for mark, name in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")) if mark in header[0]), None)
    if found:
        raise IngestError(f"{path}: line 1: the header {header[0]!r} is one column separated by {found}, not commas; "
                          "save the file comma-separated (or as JSONL)")


def _csv(source: Source, batch_size: int, max_line_bytes: int) -> Iterator[RawBatch]:
    yield from _python_batches(_csv_rows(source.path, max_line_bytes), batch_size)


# Arrow containers: Parquet, save_to_disk folders, hub datasets ---------------------------


def _table_batches(table_batches: Iterator[pa.Table], prefix: str, start: int = 0) -> Iterator[RawBatch]:
    for table in table_batches:
        numbers = pa.array(np.arange(start, start + table.num_rows)).cast(pa.string())
        yield RawBatch(
            [table],
            pc.binary_join_element_wise(f"{prefix}row ", numbers, ""),
            lambda i, table=table: {k: v for k, v in table.slice(i, 1).to_pylist()[0].items() if v is not None},
        )
        start += table.num_rows


def open_parquet(source: Source) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(source.path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise IngestError(f"{source.path}: not a readable Parquet file ({exc})") from exc


def _parquet(source: Source, batch_size: int, max_line_bytes: int) -> Iterator[RawBatch]:
    return parquet_row_groups(source, batch_size)


def parquet_row_groups(source: Source, batch_size: int, row_groups: list[int] | None = None, first_row: int = 0) -> Iterator[RawBatch]:
    """Rows of some row groups of a Parquet file (all by default); ``first_row``: the number of the first."""
    parquet = open_parquet(source)
    batches = parquet.iter_batches(batch_size=batch_size, row_groups=row_groups)
    yield from _table_batches((pa.Table.from_batches([b]) for b in batches), "", first_row)


def _dataset_splits(loaded: Any, source: Source) -> Iterator[tuple[str, Any]]:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        yield "", loaded
        return
    wanted = source.spec.splits or list(loaded)
    missing = [s for s in wanted if s not in loaded]
    if missing:
        raise IngestError(f"{source.name}: no split {', '.join(map(repr, missing))}; it has {', '.join(loaded)}")
    for split in wanted:
        yield f"{split} ", loaded[split]


def _arrow_dataset(source: Source, loaded: Any, batch_size: int) -> Iterator[RawBatch]:
    for prefix, dataset in _dataset_splits(loaded, source):
        yield from _table_batches(dataset.with_format("arrow").iter(batch_size=batch_size), prefix)


def _datasets_folder(source: Source, batch_size: int, max_line_bytes: int) -> Iterator[RawBatch]:
    import datasets

    try:
        loaded = datasets.load_from_disk(source.name)
    except Exception as exc:  # datasets raises several types for damaged folders
        raise IngestError(f"{source.name}: not a readable datasets save_to_disk folder ({exc})") from exc
    yield from _arrow_dataset(source, loaded, batch_size)


def load_hub_dataset(source: Source) -> Any:
    import datasets

    name = source.name[len(HF_PREFIX):]
    spec = source.spec
    try:
        return datasets.load_dataset(name, spec.config, revision=spec.revision)
    except Exception as exc:  # network, authentication, missing dataset or config
        config = f" (config {spec.config!r})" if spec.config else ""
        raise IngestError(
            f"{source.name}: cannot load the Hugging Face dataset {name!r}{config}: {type(exc).__name__}: {exc}. "
            "Check the name and that huggingface.co is reachable (HF_TOKEN for gated datasets); without network, "
            "load it where the hub is reachable, call save_to_disk, and use that folder as the source."
        ) from exc


def _hub(source: Source, batch_size: int, max_line_bytes: int) -> Iterator[RawBatch]:
    yield from _arrow_dataset(source, load_hub_dataset(source), batch_size)


# Readers take (source, batch_size, max_line_bytes); Arrow containers ignore the last: a
# record batch, not a line, bounds their memory.
_READERS: dict[str, Callable[[Source, int, int], Iterator[RawBatch]]] = {
    "jsonl": _jsonl,
    "json": _json,
    "csv": _csv,
    "parquet": _parquet,
    "datasets": _datasets_folder,
    "hf": _hub,
}


def read_batches(source: Source, batch_size: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[RawBatch]:
    """The rows of ``source`` in batches of about ``batch_size``, by the reader for its kind;
    no line, field or document longer than ``max_line_bytes`` is held whole."""
    return _READERS[source.kind](source, batch_size, max_line_bytes)
