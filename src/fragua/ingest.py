"""Input files -> canonical records -> deterministic split -> content-addressed dataset version.

Rows that cannot be used go to a quarantine file with their file, location and reason;
exact duplicates are counted; every row of every source is accounted for:
``rows = kept + duplicates + quarantined`` per source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .dataset_store import DatasetManifest, SourceReport, write_dataset_version
from .records import ADAPTERS, FORMATS, Record, RecordDraft, RowError, content_key, detect_format, record_id
from .settings import DataSettings, SourceSpec

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
FORMAT_SAMPLE_ROWS = 50


class IngestError(Exception):
    """A problem with an input as a whole; the message names the file (and line) and what to do."""


@dataclass(frozen=True)
class RawRow:
    location: str
    value: dict[str, Any] | RowError


@dataclass
class Quarantined:
    source: str
    location: str
    reason: str
    row: Any

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "location": self.location, "reason": self.reason, "row": self.row}


def expand_sources(sources: list[SourceSpec]) -> list[tuple[Path, SourceSpec]]:
    """Each configured file, or every supported file under a configured folder, sorted."""
    files: list[tuple[Path, SourceSpec]] = []
    for spec in sources:
        path = Path(spec.path).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
            if not found:
                raise IngestError(f"{path}: folder has no {', '.join(SUPPORTED_SUFFIXES)} files")
            files.extend((p, spec) for p in found)
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise IngestError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
            files.append((path, spec))
        else:
            raise IngestError(f"{path}: no such file or folder (data.sources)")
    return files


def _decode_json_line(raw: bytes) -> dict[str, Any] | RowError:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RowError(f"invalid UTF-8 at byte {exc.start}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return RowError(f"invalid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(value, dict):
        return RowError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _rows_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            yield RawRow(f"line {number}", _decode_json_line(raw))


def _rows_json(path: Path) -> Iterator[RawRow]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from exc
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        items, where = document["data"], "data"
    elif isinstance(document, list):
        items, where = document, ""
    else:
        raise IngestError(f"{path}: expected a JSON list of rows or an object with a 'data' list")
    for index, item in enumerate(items):
        location = f"{where}[{index}]"
        value = item if isinstance(item, dict) else RowError(f"expected a JSON object, got {type(item).__name__}")
        yield RawRow(location, value)


def _rows_csv(path: Path) -> Iterator[RawRow]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        if None in row:
            yield RawRow(f"line {reader.line_num}", RowError(f"more fields than the {len(reader.fieldnames or [])} columns in the header"))
            continue
        yield RawRow(f"line {reader.line_num}", {k: _csv_value(v) for k, v in row.items() if v is not None})


def _csv_value(value: str) -> Any:
    """CSV cells holding JSON lists/objects (messages, choices) are decoded; other cells stay text."""
    stripped = value.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def _rows_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise IngestError(f"{path}: not a readable Parquet file ({exc})") from exc
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield RawRow(f"row {index}", row)
            index += 1


_READERS = {".jsonl": _rows_jsonl, ".json": _rows_json, ".csv": _rows_csv, ".parquet": _rows_parquet}


def read_rows(path: Path) -> Iterator[RawRow]:
    return _READERS[path.suffix.lower()](path)


def choose_format(path: Path, spec: SourceSpec, rows: list[RawRow]) -> str:
    if spec.format != "auto":
        return spec.format
    for row in rows[:FORMAT_SAMPLE_ROWS]:
        if isinstance(row.value, dict) and (name := detect_format(row.value)):
            return name
    first = next((r for r in rows if isinstance(r.value, dict)), None)
    seen = f"first row's keys: {sorted(first.value)}" if first else "no row is a JSON object"
    raise IngestError(
        f"{path}: unknown format ({seen}); tried {', '.join(FORMATS)}. "
        "Rename the fields or set the source's 'format' explicitly."
    )


def check_quality(draft: RecordDraft, settings: DataSettings) -> None:
    for index, message in enumerate(draft.messages):
        text = message.content.strip()
        if not text and message.role in ("user", "assistant"):
            raise RowError(f"empty {message.role} message (messages[{index}])")
        if len(message.content) > settings.max_chars:
            raise RowError(f"{message.role} message has {len(message.content)} characters, above data.max_chars={settings.max_chars}")
        if message.role in ("user", "assistant") and len(text) < settings.min_chars:
            raise RowError(f"{message.role} message has {len(text)} characters, below data.min_chars={settings.min_chars}")


def assign_split(group: str, seed: int, validation_fraction: float) -> str:
    """Hash-based, so a group's split never changes as the dataset grows."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if position < validation_fraction else "train"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class IngestResult:
    records: list[Record]
    quarantined: list[Quarantined]
    sources: list[SourceReport]


def collect(settings: DataSettings) -> IngestResult:
    """Read every source into canonical records; pure apart from reading the files."""
    records: list[Record] = []
    quarantined: list[Quarantined] = []
    reports: list[SourceReport] = []
    seen: set[str] = set()
    for path, spec in expand_sources(settings.sources):
        rows = list(read_rows(path))
        if not rows:
            raise IngestError(f"{path}: the file has no rows")
        fmt = choose_format(path, spec, rows)
        adapter = ADAPTERS[fmt]
        kept = duplicates = 0
        rejected: list[Quarantined] = []
        for row in rows:
            try:
                if isinstance(row.value, RowError):
                    raise row.value
                draft = adapter(row.value)
                check_quality(draft, settings)
            except RowError as exc:
                rejected.append(Quarantined(str(path), row.location, str(exc), _jsonable(row.value)))
                continue
            key = content_key(draft)
            if settings.dedupe and key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rid = record_id(key)
            meta = dict(draft.meta)
            meta["location"] = row.location
            record = Record(
                id=rid,
                messages=draft.messages,
                choices=draft.choices,
                answer=draft.answer,
                domain=draft.domain or spec.domain or "general",
                source=str(path),
                meta=meta,
            )
            record.split = assign_split(record.group, settings.split_seed, settings.validation_fraction)
            records.append(record)
            kept += 1
        if rows and len(rejected) / len(rows) > settings.max_rejected_fraction:
            first = rejected[0]
            raise IngestError(
                f"{path}: {len(rejected)} of {len(rows)} rows are unusable as {fmt} "
                f"(first: {first.location}: {first.reason}); above data.max_rejected_fraction="
                f"{settings.max_rejected_fraction}. Fix the file or set the source's format."
            )
        quarantined.extend(rejected)
        reports.append(
            SourceReport(path=str(path), sha256=file_sha256(path), format=fmt, rows=len(rows), kept=kept, duplicates=duplicates, quarantined=len(rejected))
        )
    return IngestResult(records, quarantined, reports)


def _jsonable(value: Any) -> Any:
    if isinstance(value, RowError):
        return None
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def ingest(settings: DataSettings, datasets_root: Path) -> DatasetManifest:
    """Collect, check the split is usable, and store the dataset version (idempotent)."""
    result = collect(settings)
    counts = Counter(r.split for r in result.records)
    for split in ("train", "validation"):
        if not counts[split]:
            raise IngestError(
                f"the {split} split is empty ({len(result.records)} usable rows in "
                f"{', '.join(s.path for s in result.sources)}); add data or change data.validation_fraction"
            )
    return write_dataset_version(
        datasets_root,
        result.records,
        quarantine=[q.as_json() for q in result.quarantined],
        sources=result.sources,
        settings={"data": settings.model_dump(mode="json")},
    )
