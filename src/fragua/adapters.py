"""Format adapters over Arrow batches.

Each adapter turns a table of rows in one input format into canonical columns: the
messages of every row back to back (role codes + texts + per-row offsets), the answer,
options, domain/category/group hints, and the keys it did not consume (kept as ``meta``).
A row that cannot be used gets an error (kind + human-readable reason) instead; the other
rows of the batch are unaffected. Checks and message building are vectorised; only the
nested formats (SQuAD, HEAD-QA) and error messages go through Python per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from .records import CHOICE_LETTERS, REJECTION_KINDS, Message, RecordDraft, RowError, answer_index
from .textops import ROLE_CODES, as_string_array, json_objects

ROLE_NAMES = pa.array(["", "system", "user", "assistant", "tool"], pa.string())
_LETTERS = pa.array(list(CHOICE_LETTERS), pa.string())
_KIND_CODES = {kind: code for code, kind in enumerate(REJECTION_KINDS, start=1)}
CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "tool": "tool", "function": "tool", "observation": "tool",
}


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


# Column helpers -------------------------------------------------------------------------


def _column(table: pa.Table, name: str) -> pa.Array | None:
    if name not in table.column_names:
        return None
    column = table.column(name)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def type_name(kind: pa.DataType) -> str:
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


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _mask(values: pa.Array) -> np.ndarray:
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _text(table: pa.Table, name: str, errors: RowErrors, *, required: bool) -> pa.StringArray:
    """A string field, nulls as ''; missing or wrongly typed values become row errors."""
    length = table.num_rows
    column = _column(table, name)
    if column is None or pa.types.is_null(column.type):
        if required:
            errors.add(np.ones(length, bool), "missing_field", f"missing field '{name}'")
        return pa.array([""] * length, pa.string())
    if not _is_text(column.type):
        present = _mask(column.is_valid())
        if required:
            errors.add(~present, "missing_field", f"missing field '{name}'")
        errors.add(present, "wrong_type", f"field '{name}' must be a string, got {type_name(column.type)}")
        return pa.array([""] * length, pa.string())
    if required:
        errors.add(_mask(column.is_null()), "missing_field", f"missing field '{name}'")
    return as_string_array(column)


def _nonempty(values: pa.StringArray) -> np.ndarray:
    return _mask(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0))


def with_nulls(values: pa.StringArray, present: np.ndarray) -> pa.StringArray:
    """The same strings, null where ``present`` is false (no copy of the text)."""
    values = pa.concat_arrays([values]) if values.offset else values
    bitmap = np.packbits(present, bitorder="little")
    return pa.StringArray.from_buffers(len(values), values.buffers()[1], values.buffers()[2], pa.py_buffer(bitmap.tobytes()))


def _domain(table: pa.Table, errors: RowErrors) -> pa.Array | None:
    column = _column(table, "domain")
    if column is None or pa.types.is_null(column.type):
        return None
    present = _mask(column.is_valid())
    if not _is_text(column.type):
        errors.add(present, "wrong_type", "field 'domain' must be a non-empty string")
        return None
    stripped = pc.utf8_trim_whitespace(as_string_array(column))
    errors.add(present & ~_nonempty(stripped), "invalid_value", "field 'domain' must be a non-empty string")
    return with_nulls(stripped, present)


def _optional_text(table: pa.Table, name: str) -> pa.Array | None:
    """A hint column (category, group) when the rows carry it as text or a number."""
    column = _column(table, name)
    if column is None or not (_is_text(column.type) or pa.types.is_integer(column.type)):
        return None
    return column.cast(pa.string())


def _leftovers(table: pa.Table, consumed: set[str]) -> dict[str, pa.Array]:
    return {name: _column(table, name) for name in table.column_names if name not in consumed}


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


def _adapted(table: pa.Table, errors: RowErrors, parts: Sequence[tuple[str, pa.StringArray, np.ndarray | None]], consumed: set[str], **columns: Any) -> Adapted:
    codes, contents, offsets = assemble(table.num_rows, parts)
    meta = _leftovers(table, consumed)
    return Adapted(table.num_rows, codes, contents, offsets, errors, meta=meta, category=_optional_text(table, "category"),
                   group=_optional_text(table, "group"), **columns)


# Flat formats ---------------------------------------------------------------------------


def adapt_alpaca(table: pa.Table, options: AdapterOptions) -> Adapted:
    errors = RowErrors(table.num_rows)
    instruction = _text(table, "instruction", errors, required=True)
    extra = _text(table, "input", errors, required=False)
    output = _text(table, "output", errors, required=True)
    system = _text(table, "system", errors, required=False)
    domain = _domain(table, errors)
    prompt = pc.binary_join_element_wise(instruction, with_nulls(extra, _nonempty(extra)), "\n\n", null_handling="skip")
    parts = [("system", system, _nonempty(system)), ("user", prompt, None), ("assistant", output, None)]
    return _adapted(table, errors, parts, {"instruction", "input", "output", "system", "domain"}, answer=output, domain=domain)


def adapt_prompt_completion(table: pa.Table, options: AdapterOptions) -> Adapted:
    errors = RowErrors(table.num_rows)
    prompt = _text(table, "prompt", errors, required=True)
    completion = _text(table, "completion", errors, required=True)
    domain = _domain(table, errors)
    parts = [("user", prompt, None), ("assistant", completion, None)]
    return _adapted(table, errors, parts, {"prompt", "completion", "domain"}, answer=completion, domain=domain)


def _conversation(
    table: pa.Table, errors: RowErrors, *, field_name: str, role_key: str, content_key: str, roles: dict[str, str], last_turn: str, no_user: str
) -> tuple[np.ndarray, pa.StringArray, np.ndarray, dict[str, pa.Array]]:
    """Validate and flatten a list-of-turns column (chat ``messages``, ShareGPT ``conversations``)."""
    length = table.num_rows
    column = _column(table, field_name)
    shape = f"field '{field_name}' must be a non-empty list of {{{role_key}, {content_key}}}"
    empty = (np.empty(0, np.uint8), pa.array([], pa.string()), np.zeros(length + 1, np.int64), {})
    if column is None or pa.types.is_null(column.type):
        errors.add(np.ones(length, bool), "missing_field", shape)
        return empty
    if pa.types.is_large_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    if not pa.types.is_list(column.type):
        errors.add(_mask(column.is_valid()), "wrong_type", shape)
        errors.add(_mask(column.is_null()), "missing_field", shape)
        return empty
    errors.add(_mask(column.is_null()), "missing_field", shape)
    counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    errors.add(counts == 0, "invalid_value", shape)
    offsets = np.zeros(length + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    items = column.flatten()
    total = len(items)
    parent = np.repeat(np.arange(length), counts)
    position = np.arange(total) - offsets[parent]
    problem = np.zeros(total, dtype=np.int8)  # 1 not an object, 2 unknown role, 3 content not text
    codes = np.zeros(total, dtype=np.uint8)
    contents = pa.array([""] * total, pa.string())
    role_values: pa.Array | None = None
    content_type = "missing"
    extras: dict[str, pa.Array] = {}
    if not pa.types.is_struct(items.type):
        problem[:] = 1
    else:
        children = dict(zip([f.name for f in items.type], items.flatten()))
        problem[_mask(items.is_null())] = 1
        role_values = children.get(role_key)
        if role_values is not None and _is_text(role_values.type):
            names = list(roles)
            found = pc.index_in(role_values, value_set=pa.array(names, pa.string()))
            known = _mask(found.is_valid())
            lookup = np.array([ROLE_CODES[roles[n]] for n in names], dtype=np.uint8)
            codes[known] = lookup[found.to_numpy(zero_copy_only=False)[known].astype(np.int64)]
            problem[(problem == 0) & ~known] = 2
        else:
            problem[problem == 0] = 2
        content_values = children.get(content_key)
        if content_values is not None and _is_text(content_values.type):
            problem[(problem == 0) & _mask(content_values.is_null())] = 3
            content_type = "null"
            contents = as_string_array(content_values)
        else:
            problem[problem == 0] = 3
            content_type = type_name(content_values.type) if content_values is not None else "missing"
        extras = {name: values for name, values in children.items() if name not in (role_key, content_key)}
    bad = np.flatnonzero(problem)
    rows, first = np.unique(parent[bad], return_index=True)
    allowed = ", ".join(dict.fromkeys(roles))
    for row, item in zip(rows.tolist(), bad[first].tolist()):
        where = f"{field_name}[{position[item]}]"
        if problem[item] == 1:
            errors.add_row(row, "invalid_value", f"{where} must be an object with '{role_key}' and '{content_key}'")
        elif problem[item] == 2:
            value = role_values[item].as_py() if role_values is not None else None
            errors.add_row(row, "invalid_value", f"{where}.{role_key} {value!r} is not one of {allowed}")
        else:
            errors.add_row(row, "wrong_type", f"{where}.{content_key} must be a string, got {content_type}")
    nonempty_rows = counts > 0
    last = np.zeros(length, dtype=np.uint8)
    last[nonempty_rows] = codes[offsets[1:][nonempty_rows] - 1]
    errors.add(nonempty_rows & (last != ROLE_CODES["assistant"]), "invalid_value", last_turn)
    users = np.bincount(parent[codes == ROLE_CODES["user"]], minlength=length)
    errors.add(nonempty_rows & (users == 0), "invalid_value", no_user)
    meta = {}
    if extras:
        # Per-turn keys beyond role and content (names, tool calls) are kept, per turn, in meta.
        kept = pa.StructArray.from_arrays(list(extras.values()), names=list(extras))
        has_any = np.zeros(total, bool)
        for values in extras.values():
            has_any |= _mask(values.is_valid())
        if has_any.any():
            per_row = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), kept)
            rows_with = np.bincount(parent[has_any], minlength=length) > 0
            meta[f"{field_name}_extra"] = pc.if_else(pa.array(rows_with), per_row, pa.scalar(None, per_row.type))
    return codes, contents, offsets, meta


def _from_conversation(table: pa.Table, **shape: Any) -> Adapted:
    errors = RowErrors(table.num_rows)
    codes, contents, offsets, turn_meta = _conversation(table, errors, **shape)
    field_name = shape["field_name"]
    domain = _domain(table, errors)
    meta = {**_leftovers(table, {field_name, "domain"}), **turn_meta}
    return Adapted(table.num_rows, codes, contents, offsets, errors, domain=domain, meta=meta,
                   category=_optional_text(table, "category"), group=_optional_text(table, "group"))


def adapt_chat(table: pa.Table, options: AdapterOptions) -> Adapted:
    return _from_conversation(
        table, field_name="messages", role_key="role", content_key="content", roles=CHAT_ROLES,
        last_turn="the last message must be the assistant's answer (role 'assistant')",
        no_user="the conversation has no 'user' message",
    )


def adapt_sharegpt(table: pa.Table, options: AdapterOptions) -> Adapted:
    return _from_conversation(
        table, field_name="conversations", role_key="from", content_key="value", roles=SHAREGPT_ROLES,
        last_turn="the last turn must be the assistant's answer (from 'gpt')",
        no_user="the conversation has no 'human' turn",
    )


# Multiple choice ------------------------------------------------------------------------


def _choice_messages(question: pa.StringArray, options: pa.StringArray, offsets: np.ndarray, index: np.ndarray) -> tuple[pa.StringArray, pa.StringArray]:
    """'Question\\nA. x\\nB. y' and 'B. y' for every row, as multiple_choice_messages renders them."""
    length = len(question)
    counts = np.diff(offsets)
    parent = np.repeat(np.arange(length), counts)
    position = np.minimum(np.arange(len(options)) - offsets[parent], len(CHOICE_LETTERS) - 1)
    lines = pc.binary_join_element_wise(_LETTERS.take(pa.array(position)), options, ". ")
    listed = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), lines), "\n")
    user = pc.binary_join_element_wise(question, listed, "\n")
    padded = pa.concat_arrays([options, pa.array([""], pa.string())])
    chosen = np.where(counts > 0, offsets[:-1] + np.minimum(index, np.maximum(counts - 1, 0)), len(options))
    letters = _LETTERS.take(pa.array(np.clip(index, 0, len(CHOICE_LETTERS) - 1)))
    assistant = pc.binary_join_element_wise(letters, padded.take(pa.array(chosen)), ". ")
    return user, assistant


def _choice_columns(length: int, question: pa.StringArray, options: pa.StringArray, offsets: np.ndarray, index: np.ndarray, errors: RowErrors) -> dict[str, Any]:
    user, assistant = _choice_messages(question, options, offsets, index)
    valid = errors.ok
    choices = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), options, mask=pa.array(~valid))
    letters = _LETTERS.take(pa.array(np.clip(index, 0, len(CHOICE_LETTERS) - 1)))
    return {"user": user, "assistant": assistant, "choices": choices, "answer": letters}


def _letter_or_index(answers: pa.Array, counts: np.ndarray) -> np.ndarray:
    """The common answer forms resolved in bulk (a letter, or a 0-based integer within range);
    -1 where :func:`answer_index` has to look at the value."""
    resolved = np.full(len(answers), -1, dtype=np.int64)
    if pa.types.is_integer(answers.type):
        values = pc.fill_null(answers, -1).to_numpy().astype(np.int64)
        fits = (values >= 0) & (values < counts)
        resolved[fits] = values[fits]
    elif _is_text(answers.type):
        letters = pc.ascii_upper(pc.utf8_trim_whitespace(as_string_array(answers)))
        single = np.flatnonzero(pc.binary_length(letters).to_numpy() == 1)
        data, offsets = np.frombuffer(letters.buffers()[2] or b"", np.uint8), np.frombuffer(letters.buffers()[1], np.int32)[letters.offset:]
        if len(single):
            values = data[offsets[single]].astype(np.int64) - ord("A")
            fits = (values >= 0) & (values < counts[single])
            resolved[single[fits]] = values[fits]
    return resolved


def adapt_multiple_choice(table: pa.Table, options: AdapterOptions) -> Adapted:
    length = table.num_rows
    errors = RowErrors(length)
    question = _text(table, "question", errors, required=True)
    column = _column(table, "choices")
    shape = "field 'choices' must be a list of 2 to 26 options"
    counts = np.zeros(length, dtype=np.int64)
    texts = pa.array([], pa.string())
    if column is None or not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        errors.add(np.ones(length, bool), "missing_field" if column is None or pa.types.is_null(column.type) else "wrong_type", shape)
    else:
        counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
        errors.add((counts < 2) | (counts > len(CHOICE_LETTERS)), "invalid_value", shape)
        flat = column.flatten()
        if _is_text(flat.type):
            texts = as_string_array(flat)
            blank = _mask(flat.is_null()) | ~_nonempty(texts)
        else:
            texts = pa.array([""] * len(flat), pa.string())
            blank = np.ones(len(flat), bool)
        bad_rows = np.bincount(np.repeat(np.arange(length), counts)[blank], minlength=length) > 0
        errors.add(bad_rows, "invalid_value", "every option in 'choices' must be a non-empty string")
    offsets = np.zeros(length + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    answers = _column(table, "answer")
    index = np.zeros(length, dtype=np.int64)
    if answers is None or pa.types.is_null(answers.type):
        errors.add(np.ones(length, bool), "missing_field", "missing field 'answer'")
    else:
        errors.add(_mask(answers.is_null()), "missing_field", "missing field 'answer'")
        resolved = _letter_or_index(answers, counts)
        index[resolved >= 0] = resolved[resolved >= 0]
        rest = np.flatnonzero(errors.ok & (resolved < 0))
        if len(rest):  # numeric strings, and the rows whose answer needs an explanation
            values = answers.take(pa.array(rest)).to_pylist()
            for row, value in zip(rest.tolist(), values):
                try:
                    index[row] = answer_index(value, int(counts[row]))
                except RowError as exc:
                    errors.add_row(row, exc.kind, str(exc))
    domain = _domain(table, errors)
    columns = _choice_columns(length, question, texts, offsets, index, errors)
    parts = [("user", columns["user"], None), ("assistant", columns["assistant"], None)]
    return _adapted(table, errors, parts, {"question", "choices", "answer", "domain"},
                    answer=columns["answer"], choices=columns["choices"], domain=domain)


def _integers(values: pa.Array | None, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, usable mask) from integers or numeric strings such as ' 3' (HEAD-QA ids)."""
    numbers = np.full(length, -1, dtype=np.int64)
    if values is None:
        return numbers, np.zeros(length, bool)
    if pa.types.is_integer(values.type):
        usable = _mask(values.is_valid())
        numbers[usable] = values.filter(pa.array(usable)).to_numpy().astype(np.int64)
        return numbers, usable
    if not _is_text(values.type):
        return numbers, np.zeros(length, bool)
    stripped = pc.utf8_trim_whitespace(as_string_array(values))
    usable = _mask(pc.utf8_is_digit(stripped)) & _mask(values.is_valid())
    numbers[usable] = pc.cast(stripped.filter(pa.array(usable)), pa.int64()).to_numpy()
    return numbers, usable


def _first_per_row(flags: np.ndarray, parent: np.ndarray, length: int) -> np.ndarray:
    """Index of the first flagged item of each row (-1 where none is)."""
    first = np.full(length, -1, dtype=np.int64)
    where = np.flatnonzero(flags)
    rows, position = np.unique(parent[where], return_index=True)
    first[rows] = where[position]
    return first


def adapt_head_qa(table: pa.Table, options: AdapterOptions) -> Adapted:
    length = table.num_rows
    errors = RowErrors(length)
    question = _text(table, "qtext", errors, required=True)
    column = _column(table, "answers")
    shape = "field 'answers' must be a list of 2 to 26 {aid, atext} options"
    counts = np.zeros(length, dtype=np.int64)
    texts = pa.array([], pa.string())
    aids = np.empty(0, dtype=np.int64)
    if column is None or not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        errors.add(np.ones(length, bool), "missing_field" if column is None or pa.types.is_null(column.type) else "wrong_type", shape)
    else:
        counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
        errors.add((counts < 2) | (counts > len(CHOICE_LETTERS)), "invalid_value", shape)
        items = column.flatten()
        total = len(items)
        usable = np.zeros(total, bool)
        if pa.types.is_struct(items.type):
            children = dict(zip([f.name for f in items.type], items.flatten()))
            aids, numeric = _integers(children.get("aid"), total)
            atext = children.get("atext")
            if atext is not None and _is_text(atext.type):
                texts = as_string_array(atext)
                usable = numeric & _nonempty(texts) & _mask(atext.is_valid())
        texts = texts if len(texts) == total else pa.array([""] * total, pa.string())
        aids = aids if len(aids) == total else np.full(total, -1, dtype=np.int64)
        parent = np.repeat(np.arange(length), counts)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        first_bad = _first_per_row(~usable, parent, length)
        for row in np.flatnonzero(first_bad >= 0).tolist():
            errors.add_row(row, "invalid_value", f"answers[{first_bad[row] - offsets[row]}] must have a numeric 'aid' and a non-empty 'atext'")
    offsets = np.zeros(length + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    right = _column(table, "ra")
    wanted, numeric = _integers(right, length)
    unset = np.flatnonzero(~numeric & errors.ok)
    for row in unset.tolist():
        value = right[row].as_py() if right is not None else None
        errors.add_row(row, "missing_field" if value is None else "invalid_value", f"field 'ra' must be the aid of the right answer, got {value!r}")
    parent = np.repeat(np.arange(length), counts)
    match = _first_per_row(aids == wanted[parent], parent, length)
    for row in np.flatnonzero((match < 0) & errors.ok).tolist():
        listed = ", ".join(str(a) for a in aids[offsets[row]: offsets[row + 1]].tolist())
        errors.add_row(row, "invalid_value", f"ra {right[row].as_py()!r} matches no answer's aid ({listed})")
    index = np.where(match >= 0, match - offsets[:-1], 0)
    names, qids = _optional_text(table, "name"), _optional_text(table, "qid")
    group = (
        pc.binary_join_element_wise("head_qa:", pc.utf8_trim_whitespace(names), ":", pc.utf8_trim_whitespace(qids), "")
        if names is not None and qids is not None else pa.nulls(length, pa.string())
    )
    domain = _domain(table, errors)
    columns = _choice_columns(length, question, texts, offsets, index, errors)
    parts = [("user", columns["user"], None), ("assistant", columns["assistant"], None)]
    adapted = _adapted(table, errors, parts, {"qtext", "answers", "domain"}, answer=columns["answer"], choices=columns["choices"], domain=domain)
    adapted.group = pc.coalesce(adapted.group, group) if adapted.group is not None else group
    adapted.meta["group"] = adapted.group
    return adapted


# SQuAD ----------------------------------------------------------------------------------


def _answer_texts(column: pa.Array | None, length: int) -> tuple[pa.ListArray | None, pa.Array | None, np.ndarray]:
    """Each row's answer texts and their ``answer_start`` values (flat, aligned with the texts;
    None where the rows carry none): HF rows hold {'text': [...], 'answer_start': [...]}, rows
    from the nested file a list of {text, answer_start}. Also which rows have an unusable shape."""
    if column is None or pa.types.is_null(column.type):
        return None, None, np.zeros(length, bool)
    starts = None
    if pa.types.is_struct(column.type) and column.type.get_field_index("text") >= 0:
        texts = column.field("text")
        if column.type.get_field_index("answer_start") >= 0 and pa.types.is_list(column.field("answer_start").type):
            starts = column.field("answer_start").flatten()
    elif pa.types.is_list(column.type) and pa.types.is_struct(column.type.value_type) and column.type.value_type.get_field_index("text") >= 0:
        counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
        items = column.flatten()
        texts = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)), items.field("text"), mask=column.is_null())
        if column.type.value_type.get_field_index("answer_start") >= 0:
            starts = items.field("answer_start")
    else:
        return None, None, _mask(column.is_valid())
    if not (pa.types.is_list(texts.type) and (_is_text(texts.type.value_type) or pa.types.is_null(texts.type.value_type))):
        return None, None, _mask(column.is_valid())
    if starts is not None and (not pa.types.is_integer(starts.type) or len(starts) != len(texts.flatten())):
        starts = None  # offsets that are not integers, or not one per text, say nothing we could check
    return texts, starts, np.zeros(length, bool)


def _check_answer_starts(context: pa.StringArray, flat: pa.StringArray, starts: pa.Array, first: np.ndarray,
                         row_offsets: np.ndarray, errors: RowErrors) -> None:
    """The answer that becomes the target must sit in the context at its ``answer_start``: a
    SQuAD row where it does not pairs a question with the wrong paragraph or a shifted label."""
    for row in np.flatnonzero((first >= 0) & errors.ok).tolist():
        item = int(first[row])
        start = starts[item].as_py()
        if start is None:
            continue
        text, passage = flat[item].as_py(), context[row].as_py()
        where = f"answers[{item - row_offsets[row]}]"
        if start < 0 or start + len(text) > len(passage):
            errors.add_row(row, "answer_not_in_context",
                           f"{where}.answer_start {start} is outside the context ({len(passage)} characters) for an answer of {len(text)}")
        elif passage[start: start + len(text)] != text:
            errors.add_row(row, "answer_not_in_context",
                           f"{where}.text {text!r} is not at answer_start {start} in the context (found {passage[start: start + len(text)]!r})")


def adapt_squad(table: pa.Table, options: AdapterOptions) -> Adapted:
    length = table.num_rows
    errors = RowErrors(length)
    context = _text(table, "context", errors, required=True)
    question = _text(table, "question", errors, required=True)
    texts, starts, malformed = _answer_texts(_column(table, "answers"), length)
    errors.add(malformed, "wrong_type", "field 'answers' must be {text: [...], answer_start: [...]} or a list of {text, answer_start}")
    first = np.full(length, -1, dtype=np.int64)
    flat = pa.array([], pa.string())
    if texts is not None:
        counts = pc.fill_null(pc.list_value_length(texts), 0).to_numpy().astype(np.int64)
        flat = as_string_array(texts.flatten()) if _is_text(texts.type.value_type) else pa.array([""] * int(counts.sum()), pa.string())
        first = _first_per_row(_nonempty(flat), np.repeat(np.arange(length), counts), length)
        if starts is not None:
            _check_answer_starts(context, flat, starts, first, np.concatenate([[0], np.cumsum(counts)]), errors)
    impossible = _column(table, "is_impossible")
    flagged = _mask(impossible) if impossible is not None and pa.types.is_boolean(impossible.type) else np.zeros(length, bool)
    unanswerable = (flagged | (first < 0)) & ~malformed
    target = pa.concat_arrays([flat, pa.array([options.no_answer_text], pa.string())]).take(pa.array(np.where(unanswerable | (first < 0), len(flat), first)))
    if options.squad_unanswerable == "drop":
        errors.add(unanswerable, "unanswerable", "unanswerable question (no answer in the context); data.squad_unanswerable = 'drop'")
    groups = pa.array([f"squad:{xxhash.xxh3_64_hexdigest(c.strip().encode())}" for c in context.to_pylist()], pa.string())
    prompt = pc.binary_join_element_wise("Context: ", context, "\n\nQuestion: ", question, "")
    domain = _domain(table, errors)
    parts = [("user", prompt, None), ("assistant", target, None)]
    adapted = _adapted(table, errors, parts, {"context", "question", "domain"}, answer=target, domain=domain,
                       near_text=pc.binary_join_element_wise(question, target, "\n"), unanswerable=unanswerable)
    adapted.group = pc.coalesce(adapted.group, groups) if adapted.group is not None else groups
    adapted.meta["group"] = adapted.group
    return adapted


ADAPTERS: dict[str, Callable[[pa.Table, AdapterOptions], Adapted]] = {
    "alpaca": adapt_alpaca,
    "prompt_completion": adapt_prompt_completion,
    "chat": adapt_chat,
    "sharegpt": adapt_sharegpt,
    "squad": adapt_squad,
    "head_qa": adapt_head_qa,
    "multiple_choice": adapt_multiple_choice,
}


# Rows that are Python dicts --------------------------------------------------------------


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
