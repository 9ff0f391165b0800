"""Examples for the intake queue from a file in any format ingest reads.

The same readers (JSONL, JSON, CSV, Parquet, save_to_disk folders, hf:NAME) and row
adapters (alpaca, chat, ShareGPT, SQuAD, HEAD-QA, multiple choice ...) as ingest, so a
file that ingests also queues. Rows that cannot become examples are returned with their
location and reason, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fragua.data.formats.adapt import ADAPTERS, drafts
from fragua.data.formats.columnar import AdapterOptions
from fragua.data.prepare import choose_format
from fragua.data.quality import check_lengths, message_texts
from fragua.data.readers import read_batches
from fragua.data.records import RowError
from fragua.data.sources import IngestError, expand_sources
from fragua.intake.queue import content_sha, draft_record
from fragua.settings import DataSettings, SourceSpec


@dataclass
class FileExamples:
    items: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (record, idempotency key)
    rejected: list[str] = field(default_factory=list)  # "location: reason"
    formats: dict[str, str] = field(default_factory=dict)  # source -> format


def import_key(record: dict[str, Any]) -> str:
    """Imported rows are keyed by content: importing the same file twice adds nothing."""
    return f"import:{content_sha(record)[:40]}"


def read_examples(path: str, data: DataSettings, *, format: str = "auto", domain: str | None = None) -> FileExamples:
    spec = SourceSpec(path=path, format=format, domain=domain)  # type: ignore[arg-type]
    sources = expand_sources([spec])
    if not sources:
        raise IngestError(f"{path}: no JSONL, JSON, CSV or Parquet files found")
    found = FileExamples()
    options = AdapterOptions(no_answer_text=data.no_answer_text, squad_unanswerable=data.squad_unanswerable)
    for source in sources:
        for raw in read_batches(source, data.batch_size, data.max_line_bytes):
            found.rejected += [f"{location}: {error}" for location, error, _ in raw.failures]
            order = np.sort(np.concatenate(raw.positions)) if raw.positions is not None else None
            for index, table in enumerate(raw.tables):
                fmt = choose_format(source, table)
                found.formats[source.name] = fmt
                if raw.locations is None:
                    locations = [f"{source.name}: row {i + 1}" for i in range(table.num_rows)]
                elif order is None:
                    locations = raw.locations.to_pylist()
                else:
                    locations = raw.locations.take(np.searchsorted(order, raw.positions[index])).to_pylist()  # type: ignore[index]
                adapted = ADAPTERS[fmt](table, options)
                check_lengths(adapted, message_texts(adapted), data)  # empty, too short, too long: as ingest judges them
                for location, draft in zip(locations, drafts(adapted)):
                    if isinstance(draft, RowError):
                        found.rejected.append(f"{location}: {draft}")
                        continue
                    draft.domain = draft.domain or domain
                    if draft.category:
                        draft.meta.setdefault("category", draft.category)
                    record = draft_record(draft)
                    found.items.append((record, import_key(record)))
    return found
