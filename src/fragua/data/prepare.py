"""The row-local half of ingest: one batch of a source's rows -> canonical columns, checks, ids, domains and splits.

Everything here depends on one row alone, so batches are prepared on worker threads
(:mod:`fragua.data.ingest`) or in shards on other processes (:mod:`fragua.data.shards`),
and the order-dependent half (dedupe, quarantine, Parquet) is done afterwards, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fragua.data.formats import FORMAT_NAMES, detect_format
from fragua.data.formats.adapt import ADAPTERS
from fragua.data.formats.columnar import ROLE_NAMES, AdapterOptions, RowErrors
from fragua.data.quality import apply_quality, check_lengths, message_texts
from fragua.data.routing import route, rules_for_source
from fragua.data.sources import IngestError, RawBatch, Source
from fragua.data.splits import SPLITS, group_hash, split_codes
from fragua.data.textops import conversation_ids, conversation_texts, hex_ids, json_objects
from fragua.settings import DataSettings

_USER = 2


@dataclass
class Prepared:
    """A batch after the per-row work, before the order-dependent steps."""

    raw: RawBatch
    errors: RowErrors
    ids: np.ndarray  # uint64 content hash per row
    output: pa.Table  # canonical columns for every row (rows with errors are dropped later)
    split_codes: np.ndarray
    unanswerable: np.ndarray
    conversations: pa.ListArray  # message texts per row, for the statistics sample
    near_texts: list[str | None] | None


def choose_format(source: Source, table: pa.Table) -> str:
    if source.spec.format != "auto":
        return source.spec.format
    if name := detect_format(table.column_names):
        return name
    raise IngestError(
        f"{source.name}: unknown format (keys of the first rows: {sorted(table.column_names)}); tried {', '.join(FORMAT_NAMES)}. "
        "Rename the fields or set the source's 'format' explicitly."
    )


def _options(settings: DataSettings) -> AdapterOptions:
    return AdapterOptions(no_answer_text=settings.no_answer_text, squad_unanswerable=settings.squad_unanswerable)


def prepare(raw: RawBatch, fmt: str, source: Source, settings: DataSettings) -> Prepared:
    """Everything that depends on one row alone; runs on worker threads."""
    if raw.positions is None:
        return _prepare_table(raw, raw.tables[0], raw.locations, fmt, source, settings)
    # Tables of differently typed rows: prepare each, then put the rows back in chunk order.
    order = np.argsort(np.argsort(np.concatenate(raw.positions), kind="stable"), kind="stable")
    pieces, start = [], 0
    for table in raw.tables:
        rank = order[start: start + table.num_rows]
        pieces.append(_prepare_table(raw, table, raw.locations.take(pa.array(rank)), fmt, source, settings))
        start += table.num_rows
    back = np.argsort(order, kind="stable")
    errors = RowErrors(len(order))
    errors.codes = np.concatenate([p.errors.codes for p in pieces])[back]
    offset = 0
    for piece in pieces:
        for row, reason in piece.errors.reasons.items():
            errors.reasons[int(order[offset + row])] = reason
        offset += len(piece.ids)
    near = None
    if settings.near_dedupe:
        joined = [text for p in pieces for text in (p.near_texts or [])]
        near = [joined[i] for i in back.tolist()]
    taken = pa.array(back)
    return Prepared(
        raw, errors, np.concatenate([p.ids for p in pieces])[back],
        pa.concat_tables([p.output for p in pieces]).take(taken),
        np.concatenate([p.split_codes for p in pieces])[back],
        np.concatenate([p.unanswerable for p in pieces])[back],
        pa.concat_arrays([p.conversations for p in pieces]).take(taken),
        near,
    )


def _prepare_table(raw: RawBatch, table: pa.Table, locations: pa.Array, fmt: str, source: Source, settings: DataSettings) -> Prepared:
    adapted = ADAPTERS[fmt](table, _options(settings))
    length = adapted.length
    texts = message_texts(adapted)
    check_lengths(adapted, texts, settings)
    if settings.quality_threshold > 0:
        apply_quality(adapted, texts, settings.quality_threshold)
    ids = conversation_ids(texts.data, texts.offsets, adapted.role_codes, adapted.message_offsets)

    offsets = pa.array(adapted.message_offsets.astype(np.int32))
    roles = ROLE_NAMES.take(pa.array(adapted.role_codes))
    messages = pa.ListArray.from_arrays(offsets, pa.StructArray.from_arrays([roles, adapted.contents], names=["role", "content"]))
    conversations = pa.ListArray.from_arrays(offsets, adapted.contents)
    if adapted.answer is not None:
        answer = adapted.answer
    else:
        padded = pa.concat_arrays([adapted.contents, pa.array([""], pa.string())])
        counts = np.diff(adapted.message_offsets)
        answer = padded.take(pa.array(np.where(counts > 0, adapted.message_offsets[1:] - 1, len(adapted.contents))))

    rules = rules_for_source(settings.routing, source.name)
    prompt = None
    if any(rule.keywords for rule in rules):
        user_only = adapted.contents.filter(pa.array(adapted.role_codes == _USER))
        user_counts = np.bincount(np.repeat(np.arange(length), np.diff(adapted.message_offsets))[adapted.role_codes == _USER], minlength=length)
        user_offsets = np.zeros(length + 1, dtype=np.int32)
        np.cumsum(user_counts, out=user_offsets[1:])
        prompt = pc.binary_join(pa.ListArray.from_arrays(pa.array(user_offsets), user_only), "\n")
    domain = route(length, rules, row_domain=adapted.domain, category=adapted.category, prompt=prompt,
                   source_domain=source.spec.domain, default_domain=settings.default_domain)

    group_hashes = ids.copy()
    if adapted.group is not None:
        values = adapted.group.to_pylist()
        for row in np.flatnonzero(adapted.group.is_valid().to_numpy(zero_copy_only=False)).tolist():
            group_hashes[row] = group_hash(values[row])
    codes = split_codes(group_hashes, settings.split_seed, settings.validation_fraction, settings.test_fraction)

    meta_fields = dict(adapted.meta)
    meta_fields["source_location" if "location" in meta_fields else "location"] = locations
    output = pa.table(
        {
            "id": hex_ids(ids),
            "messages": messages,
            "choices": adapted.choices if adapted.choices is not None else pa.nulls(length, pa.list_(pa.string())),
            "answer": answer,
            "domain": domain,
            "source": pa.repeat(pa.scalar(source.name, pa.string()), length),
            "split": pa.array(SPLITS, pa.string()).take(pa.array(codes)),
            "origin": pa.repeat(pa.scalar("original", pa.string()), length),
            "meta": json_objects(meta_fields, length),
        }
    )
    near_texts = None
    if settings.near_dedupe:
        ok = np.flatnonzero(adapted.errors.ok)
        near_texts = [None] * length
        if adapted.near_text is not None:
            given = adapted.near_text.to_pylist()
            for row in ok.tolist():
                near_texts[row] = given[row].lower()
        else:
            for row, text in zip(ok.tolist(), conversation_texts(texts.data, texts.offsets, adapted.message_offsets, ok.tolist())):
                near_texts[row] = text
    unanswerable = adapted.unanswerable if adapted.unanswerable is not None else np.zeros(length, bool)
    return Prepared(raw, adapted.errors, ids, output, codes, unanswerable, conversations, near_texts)
