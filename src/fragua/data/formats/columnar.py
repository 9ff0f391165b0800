"""What every format adapter shares: the canonical columns of a batch, its row errors, and column helpers.

Each adapter (one module per family of formats) turns a table of rows in one input format into
canonical columns: the messages of every row back to back (role codes + texts + per-row
offsets), the answer, options, domain/category/group hints, and the keys it did not consume
(kept as ``meta``). A row that cannot be used gets an error (kind + human-readable reason)
instead; the other rows of the batch are unaffected. Checks and message building are
vectorised; only the nested formats (SQuAD, HEAD-QA) and error messages go through Python per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fragua.data.records import REJECTION_KINDS
from fragua.data.textops import ROLE_CODES, as_string_array

ROLE_NAMES = pa.array(["", "system", "user", "assistant", "tool"], pa.string())
_KIND_CODES = {kind: code for code, kind in enumerate(REJECTION_KINDS, start=1)}


@dataclass(frozen=True)
class AdapterOptions:
    no_answer_text: str = "unanswerable"
    squad_unanswerable: str = "keep"


class RowErrors:
    """The first error of each row of a batch: a kind code (0 = fine) and a reason."""

    def __init__(self, length: int) -> None:
        self.codes = np.zeros(length, dtype=np.int8)
        self.reasons: dict[int, str] = {}

    @property
    def ok(self) -> np.ndarray:
        return self.codes == 0

    def add(self, mask: np.ndarray, kind: str, reason: str | Callable[[int], str]) -> None:
        fresh = np.flatnonzero(mask & (self.codes == 0))
        if not len(fresh):
            return
        self.codes[fresh] = _KIND_CODES[kind]
        for row in fresh.tolist():
            self.reasons[row] = reason if isinstance(reason, str) else reason(row)

    def add_row(self, row: int, kind: str, reason: str) -> None:
        if self.codes[row] == 0:
            self.codes[row] = _KIND_CODES[kind]
            self.reasons[row] = reason

    def kind(self, row: int) -> str:
        return REJECTION_KINDS[self.codes[row] - 1]


@dataclass
class Adapted:
    """Canonical columns of one batch; rows with an error are dropped downstream."""

    length: int
    role_codes: np.ndarray  # uint8 per message, all rows back to back
    contents: pa.StringArray  # one per message
    message_offsets: np.ndarray  # int64, length + 1
    errors: RowErrors
    answer: pa.Array | None = None  # None: the final message's text
    choices: pa.Array | None = None  # list<string>, null for rows without options
    domain: pa.Array | None = None  # the row's own 'domain' field
    category: pa.Array | None = None
    group: pa.Array | None = None  # rows sharing a group share a split
    near_text: pa.Array | None = None  # text compared for near-duplicates; None: the messages
    meta: dict[str, pa.Array] = field(default_factory=dict)
    unanswerable: np.ndarray | None = None


Adapter = Callable[[pa.Table, AdapterOptions], Adapted]
"""A family module's function from a table of rows in one format to canonical columns."""


def table_column(table: pa.Table, name: str) -> pa.Array | None:
    """A column as one array, or None when the rows do not carry it."""
    if name not in table.column_names:
        return None
    column = table.column(name)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def type_name(kind: pa.DataType) -> str:
    """The JSON name of an Arrow type, for the reasons given to users."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_floating(kind):
        return "number"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "list"
    if pa.types.is_struct(kind):
        return "object"
    if pa.types.is_null(kind):
        return "null"
    return str(kind)


def is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def as_mask(values: pa.Array) -> np.ndarray:
    """A boolean column as a numpy mask, null as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def text_field(table: pa.Table, name: str, errors: RowErrors, *, required: bool) -> pa.StringArray:
    """A string field, nulls as ''; missing or wrongly typed values become row errors."""
    length = table.num_rows
    column = table_column(table, name)
    if column is None or pa.types.is_null(column.type):
        if required:
            errors.add(np.ones(length, bool), "missing_field", f"missing field '{name}'")
        return pa.array([""] * length, pa.string())
    if not is_text(column.type):
        present = as_mask(column.is_valid())
        if required:
            errors.add(~present, "missing_field", f"missing field '{name}'")
        errors.add(present, "wrong_type", f"field '{name}' must be a string, got {type_name(column.type)}")
        return pa.array([""] * length, pa.string())
    if required:
        errors.add(as_mask(column.is_null()), "missing_field", f"missing field '{name}'")
    return as_string_array(column)


def nonempty(values: pa.StringArray) -> np.ndarray:
    """Which strings hold more than whitespace."""
    return as_mask(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0))


def with_nulls(values: pa.StringArray, present: np.ndarray) -> pa.StringArray:
    """The same strings, null where ``present`` is false (no copy of the text)."""
    values = pa.concat_arrays([values]) if values.offset else values
    bitmap = np.packbits(present, bitorder="little")
    return pa.StringArray.from_buffers(len(values), values.buffers()[1], values.buffers()[2], pa.py_buffer(bitmap.tobytes()))


def domain_field(table: pa.Table, errors: RowErrors) -> pa.Array | None:
    """The row's own 'domain' (stripped, null where absent); one that is not a non-empty string is a row error."""
    column = table_column(table, "domain")
    if column is None or pa.types.is_null(column.type):
        return None
    present = as_mask(column.is_valid())
    if not is_text(column.type):
        errors.add(present, "wrong_type", "field 'domain' must be a non-empty string")
        return None
    stripped = pc.utf8_trim_whitespace(as_string_array(column))
    errors.add(present & ~nonempty(stripped), "invalid_value", "field 'domain' must be a non-empty string")
    return with_nulls(stripped, present)


def hint_field(table: pa.Table, name: str) -> pa.Array | None:
    """A hint column (category, group) when the rows carry it as text or a number."""
    column = table_column(table, name)
    if column is None or not (is_text(column.type) or pa.types.is_integer(column.type)):
        return None
    return column.cast(pa.string())


def leftovers(table: pa.Table, consumed: set[str]) -> dict[str, pa.Array]:
    """The columns an adapter did not consume: they become the record's ``meta``."""
    return {name: table_column(table, name) for name in table.column_names if name not in consumed}


def assemble(length: int, parts: Sequence[tuple[str, pa.StringArray, np.ndarray | None]]) -> tuple[np.ndarray, pa.StringArray, np.ndarray]:
    """Interleave per-row message columns into one flat conversation list.

    ``parts`` are (role, texts, include-mask or None for every row), in conversation order.
    """
    masks = [np.ones(length, bool) if mask is None else mask for _, _, mask in parts]
    counts = np.zeros(length, dtype=np.int64)
    for mask in masks:
        counts += mask
    offsets = np.zeros(length + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    take = np.empty(int(offsets[-1]), dtype=np.int64)
    codes = np.empty(int(offsets[-1]), dtype=np.uint8)
    cursor = offsets[:-1].copy()
    for number, ((role, _, _), mask) in enumerate(zip(parts, masks)):
        rows = np.flatnonzero(mask)
        positions = cursor[rows]
        take[positions] = number * length + rows
        codes[positions] = ROLE_CODES[role]
        cursor[rows] += 1
    if not parts:
        return codes, pa.array([], pa.string()), offsets
    # Taking from the chunked columns copies the text once (concatenating first would copy it twice).
    texts = pa.chunked_array([as_string_array(values) for _, values, _ in parts]).take(pa.array(take))
    return codes, as_string_array(texts), offsets


def build_adapted(table: pa.Table, errors: RowErrors, parts: Sequence[tuple[str, pa.StringArray, np.ndarray | None]], consumed: set[str], **columns: Any) -> Adapted:
    """The adapted batch from its messages (``parts``, as for :func:`assemble`), keeping unconsumed keys as meta."""
    codes, contents, offsets = assemble(table.num_rows, parts)
    meta = leftovers(table, consumed)
    return Adapted(table.num_rows, codes, contents, offsets, errors, meta=meta, category=hint_field(table, "category"),
                   group=hint_field(table, "group"), **columns)


def first_per_row(flags: np.ndarray, parent: np.ndarray, length: int) -> np.ndarray:
    """Index of the first flagged item of each row (-1 where none is)."""
    first = np.full(length, -1, dtype=np.int64)
    where = np.flatnonzero(flags)
    rows, position = np.unique(parent[where], return_index=True)
    first[rows] = where[position]
    return first
