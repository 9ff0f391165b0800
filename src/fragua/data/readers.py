"""Per-format readers: one source -> batches of rows as Arrow tables, each row with its location.

Readers stream: at most one batch of rows is in memory (JSON documents are the exception:
they are parsed whole). Rows that cannot be parsed come back as failures with their
location and reason, and the rest of the batch carries on.
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
from fragua.data.records import RowError
from fragua.data.sources import IngestError, RawBatch, Source, file_key, remember_sha256
from fragua.settings import HF_PREFIX

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


def _jsonl(source: Source, batch_size: int) -> Iterator[RawBatch]:
    return jsonl_range(source, batch_size)


def jsonl_range(source: Source, batch_size: int, start: int = 0, stop: int | None = None, first_line: int = 1) -> Iterator[RawBatch]:
    """The lines of bytes ``start:stop`` of a JSONL file (both at line starts; ``first_line``
    is the number of the line at ``start``), numbered as a read of the whole file numbers them."""
    size = max(1 << 20, batch_size * BYTES_PER_ROW)
    whole = start == 0 and stop is None
    key = file_key(source.path)
    digest = hashlib.sha256()  # the manifest's file hash, without a second pass over the file
    with source.path.open("rb") as handle:
        handle.seek(start)
        left = stop - start if stop is not None else None
        pending = b""
        while True:
            chunk = handle.read(size if left is None else min(size, left))
            if left is not None:
                left -= len(chunk)
            if whole:
                digest.update(chunk)
            data = pending + chunk if pending else chunk
            if not data:
                if whole:
                    remember_sha256(source.path, key, digest.hexdigest())
                return
            end = data.rfind(b"\n") + 1 if chunk else len(data)
            if not end:  # one line longer than a block: read on
                pending = data
                continue
            skip = len(BOM) if first_line == 1 and data.startswith(BOM) else 0
            count = data.count(b"\n", skip, end) + (not data.endswith(b"\n", skip, end))
            # Whole lines, without their final newline: a view, not a copy.
            yield from _jsonl_block(memoryview(data)[skip: end - 1 if data.endswith(b"\n", skip, end) else end], first_line, count)
            first_line += count
            pending = data[end:]


# JSON documents (plain lists, SQuAD and HEAD-QA nested files) -----------------------------


def _load_document(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from exc
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise IngestError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from exc


Located = tuple[str, "dict[str, Any] | RowError"]


def _squad_rows(document: dict[str, Any]) -> Iterator[Located]:
    """SQuAD v1.1/v2.0 data[].paragraphs[].qas[] -> one flat HF-style row per question."""
    for i, article in enumerate(document["data"]):
        where = f"data[{i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            yield where, RowError(f"{where} must be an object with a 'paragraphs' list", "invalid_value")
            continue
        for j, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                yield where, RowError(f"{where} must be an object with 'context' and a 'qas' list", "invalid_value")
                continue
            for k, qa in enumerate(paragraph["qas"]):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                if not isinstance(qa, dict):
                    yield where, RowError("expected a JSON object", "not_an_object")
                    continue
                row = {"title": article.get("title"), "context": paragraph.get("context"), **qa}
                answers = qa.get("answers")
                if isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
                    row["answers"] = {"text": [a.get("text") for a in answers], "answer_start": [a.get("answer_start") for a in answers]}
                if isinstance(qa.get("plausible_answers"), list):
                    row["plausible_answers"] = [a.get("text") if isinstance(a, dict) else a for a in qa["plausible_answers"]]
                yield where, row


def _head_qa_rows(document: dict[str, Any]) -> Iterator[Located]:
    """HEAD-QA {"exams": {key: {name, year, category, data: [...]}}} -> one flat row per question."""
    shared = {k: v for k, v in document.items() if k in ("language", "version")}
    for key, exam in document["exams"].items():
        where = f"exams.{key}"
        if not isinstance(exam, dict) or not isinstance(exam.get("data"), list):
            yield where, RowError(f"{where} must be an object with a 'data' list of questions", "invalid_value")
            continue
        about = {"name": exam.get("name", key), "year": exam.get("year"), "category": exam.get("category")}
        for i, question in enumerate(exam["data"]):
            location = f"{where}.data[{i}]"
            if isinstance(question, dict):
                yield location, {**shared, **about, **question}
            else:
                yield location, RowError("expected a JSON object", "not_an_object")


def _document_rows(path: Path, document: Any) -> Iterator[Located]:
    if isinstance(document, dict) and isinstance(document.get("exams"), dict):
        yield from _head_qa_rows(document)
    elif isinstance(document, dict) and isinstance(document.get("data"), list) and any(
        isinstance(item, dict) and "paragraphs" in item for item in document["data"][:10]
    ):
        yield from _squad_rows(document)
    elif isinstance(document, dict) and isinstance(document.get("data"), list):
        for index, item in enumerate(document["data"]):
            yield f"data[{index}]", item if isinstance(item, dict) else RowError(f"expected a JSON object, got {type(item).__name__}", "not_an_object")
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield f"[{index}]", item if isinstance(item, dict) else RowError(f"expected a JSON object, got {type(item).__name__}", "not_an_object")
    else:
        raise IngestError(
            f"{path}: expected a JSON list of rows, an object with a 'data' list (SQuAD: data[].paragraphs[].qas[]), "
            "or a HEAD-QA object with 'exams'"
        )


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


def _json(source: Source, batch_size: int) -> Iterator[RawBatch]:
    yield from _python_batches(_document_rows(source.path, _load_document(source.path)), batch_size)


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


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    handle = io.TextIOWrapper(path.open("rb"), encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.DictReader(handle)
    try:
        _check_delimiter(path, reader.fieldnames or [])
        for row in reader:
            location = f"line {reader.line_num}"
            if None in row:
                yield location, RowError(f"more fields than the {len(reader.fieldnames or [])} columns in the header", "invalid_value")
                continue
            yield location, {k: _csv_value(v) for k, v in row.items() if v is not None}
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 after line {reader.line_num} ({exc.reason}); save it as UTF-8") from exc
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


def _csv(source: Source, batch_size: int) -> Iterator[RawBatch]:
    yield from _python_batches(_csv_rows(source.path), batch_size)


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


def _parquet(source: Source, batch_size: int) -> Iterator[RawBatch]:
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


def _datasets_folder(source: Source, batch_size: int) -> Iterator[RawBatch]:
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


def _hub(source: Source, batch_size: int) -> Iterator[RawBatch]:
    yield from _arrow_dataset(source, load_hub_dataset(source), batch_size)


_READERS: dict[str, Callable[[Source, int], Iterator[RawBatch]]] = {
    "jsonl": _jsonl,
    "json": _json,
    "csv": _csv,
    "parquet": _parquet,
    "datasets": _datasets_folder,
    "hf": _hub,
}


def read_batches(source: Source, batch_size: int) -> Iterator[RawBatch]:
    """The rows of ``source`` in batches of about ``batch_size``, by the reader for its kind."""
    return _READERS[source.kind](source, batch_size)
