"""The entry points of the format adapters: a batch in a named format, Python rows, or one row.

Dispatch goes through the registry (:data:`fragua.data.formats.FORMATS`): a format's family
module adapts it. Ingest converts whole Arrow batches at a time (:data:`ADAPTERS`); the
functions below run the same adapters on Python rows, and on a single row for callers
holding one example (tests, an API). Keys an adapter does not consume are kept in ``meta`` so
that nothing a user gave us is silently dropped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import orjson
import pyarrow as pa

from fragua.data.formats import FORMAT_NAMES, FORMATS, choice, conversation, detect_format, instruction, squad
from fragua.data.formats.columnar import ROLE_NAMES, Adapted, Adapter, AdapterOptions
from fragua.data.records import Message, RecordDraft, RowError
from fragua.data.textops import json_objects

# The registry names the family module of each format; a format its family does not adapt fails here, at import.
_FAMILIES = {module.__name__.rsplit(".", 1)[-1]: module for module in (instruction, conversation, choice, squad)}
ADAPTERS: dict[str, Adapter] = {fmt.name: _FAMILIES[fmt.family].ADAPTERS[fmt.name] for fmt in FORMATS}


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object", type(None): "null"}


def _type_tag(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _mixed_types(value: Any, path: str) -> str | None:
    """Where a nested value mixes types Arrow cannot hold in one column, for the reason."""
    if isinstance(value, dict):
        for key, item in value.items():
            if found := _mixed_types(item, f"{path}.{key}" if path else key):
                return found
        return None
    if not isinstance(value, list):
        return None
    present = [(i, item) for i, item in enumerate(value) if item is not None]
    if present:
        first_index, first = present[0]
        for index, item in present[1:]:
            if _type_tag(item) != _type_tag(first):
                return f"{path}[{first_index}] is {_type_tag(first)} but {path}[{index}] is {_type_tag(item)}"
    if present and all(isinstance(item, dict) for _, item in present):
        for key in dict.fromkeys(k for _, item in present for k in item):
            column = [(i, item.get(key)) for i, item in present if item.get(key) is not None]
            if column:
                first_index, first = column[0]
                for index, item in column[1:]:
                    if _type_tag(item) != _type_tag(first):
                        return f"{path}[{first_index}].{key} is {_type_tag(first)} but {path}[{index}].{key} is {_type_tag(item)}"
                if found := _mixed_types([item for _, item in column], f"{path}[*].{key}"):
                    return found
    return None


def _table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    keys = list(dict.fromkeys(key for row in rows for key in row))
    if not keys:  # rows that are empty objects: a table of the right length without columns
        return pa.table({"": pa.nulls(len(rows))}).drop_columns([""])
    return pa.table({key: pa.array([row.get(key) for row in rows]) for key in keys})


_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError, ValueError)


def tables_from_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[tuple[pa.Table, np.ndarray]], dict[int, RowError]]:
    """Arrow tables for Python rows, with each table's row positions.

    Rows whose values disagree in type go to separate tables (grouped by the types of their
    top-level values); a single row that still cannot be represented becomes a RowError.
    """
    tables: list[tuple[pa.Table, np.ndarray]] = []
    failed: dict[int, RowError] = {}

    def convert(positions: np.ndarray) -> None:
        chosen = [rows[i] for i in positions]
        try:
            tables.append((_table(chosen), positions))
            return
        except _CONVERSION_ERRORS as exc:
            if len(positions) == 1:
                where = _mixed_types(chosen[0], "") or str(exc)
                failed[int(positions[0])] = RowError(f"{where.lstrip('.')}: use one type per field", "mixed_types")
                return
        groups: dict[tuple, list[int]] = {}
        for position, row in zip(positions.tolist(), chosen):
            groups.setdefault(tuple(sorted((k, _type_tag(v)) for k, v in row.items())), []).append(position)
        if len(groups) == 1:
            for position in positions:
                convert(np.array([position]))
            return
        for members in groups.values():
            convert(np.array(members))

    if rows:
        convert(np.arange(len(rows)))
    return tables, failed


def drafts(adapted: Adapted) -> list[RecordDraft | RowError]:
    """Row-level view of an adapted batch (used for single rows, not on the hot path)."""
    meta = json_objects(adapted.meta, adapted.length).to_pylist()
    roles = ROLE_NAMES.take(pa.array(adapted.role_codes)).to_pylist()
    contents = adapted.contents.to_pylist()
    answers = adapted.answer.to_pylist() if adapted.answer is not None else None
    choices = adapted.choices.to_pylist() if adapted.choices is not None else None
    domains = adapted.domain.to_pylist() if adapted.domain is not None else None
    categories = adapted.category.to_pylist() if adapted.category is not None else None
    groups = adapted.group.to_pylist() if adapted.group is not None else None
    result: list[RecordDraft | RowError] = []
    for row in range(adapted.length):
        if adapted.errors.codes[row]:
            result.append(RowError(adapted.errors.reasons[row], adapted.errors.kind(row)))
            continue
        start, end = adapted.message_offsets[row], adapted.message_offsets[row + 1]
        messages = [Message(role=roles[i], content=contents[i]) for i in range(start, end)]
        result.append(
            RecordDraft(
                messages,
                choices=choices[row] if choices else None,
                answer=answers[row] if answers else messages[-1].content,
                domain=domains[row] if domains else None,
                meta=orjson.loads(meta[row]),
                category=categories[row] if categories else None,
                group=groups[row] if groups else None,
            )
        )
    return result


def adapt_rows(rows: Sequence[dict[str, Any]], format: str, options: AdapterOptions) -> list[RecordDraft | RowError]:
    tables, failed = tables_from_rows(rows)
    result: list[RecordDraft | RowError | None] = [None] * len(rows)
    for position, error in failed.items():
        result[position] = error
    for table, positions in tables:
        for position, draft in zip(positions.tolist(), drafts(ADAPTERS[format](table, options))):
            result[position] = draft
    return result  # type: ignore[return-value]


def adapt_row(row: dict[str, Any], format: str = "auto", **options: Any) -> RecordDraft:
    """One row in any supported format -> a draft record, or RowError with the reason."""
    if format == "auto":
        format = detect_format(row) or ""
        if not format:
            raise RowError(f"no known format has the keys {sorted(row)}; tried {', '.join(FORMAT_NAMES)}", "missing_field")
    drafts = adapt_rows([row], format, AdapterOptions(**options))
    if isinstance(drafts[0], RowError):
        raise drafts[0]
    return drafts[0]


def from_alpaca(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "alpaca")


def from_prompt_completion(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "prompt_completion")


def from_chat(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "chat")


def from_sharegpt(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "sharegpt")


def from_squad(row: dict[str, Any], **options: Any) -> RecordDraft:
    return adapt_row(row, "squad", **options)


def from_head_qa(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "head_qa")


def from_multiple_choice(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "multiple_choice")
