"""The conversation formats: chat ``messages`` (role/content) and ShareGPT ``conversations`` (from/value)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fragua.data.formats.columnar import (
    Adapted,
    Adapter,
    AdapterOptions,
    RowErrors,
    as_mask,
    domain_field,
    hint_field,
    is_text,
    leftovers,
    table_column,
    type_name,
)
from fragua.data.textops import ROLE_CODES, as_string_array

CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "tool": "tool", "function": "tool", "observation": "tool",
}


def _conversation(
    table: pa.Table, errors: RowErrors, *, field_name: str, role_key: str, content_key: str, roles: dict[str, str], last_turn: str, no_user: str
) -> tuple[np.ndarray, pa.StringArray, np.ndarray, dict[str, pa.Array]]:
    """Validate and flatten a list-of-turns column (chat ``messages``, ShareGPT ``conversations``)."""
    length = table.num_rows
    column = table_column(table, field_name)
    shape = f"field '{field_name}' must be a non-empty list of {{{role_key}, {content_key}}}"
    empty = (np.empty(0, np.uint8), pa.array([], pa.string()), np.zeros(length + 1, np.int64), {})
    if column is None or pa.types.is_null(column.type):
        errors.add(np.ones(length, bool), "missing_field", shape)
        return empty
    if pa.types.is_large_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    if not pa.types.is_list(column.type):
        errors.add(as_mask(column.is_valid()), "wrong_type", shape)
        errors.add(as_mask(column.is_null()), "missing_field", shape)
        return empty
    errors.add(as_mask(column.is_null()), "missing_field", shape)
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
        problem[as_mask(items.is_null())] = 1
        role_values = children.get(role_key)
        if role_values is not None and is_text(role_values.type):
            names = list(roles)
            found = pc.index_in(role_values, value_set=pa.array(names, pa.string()))
            known = as_mask(found.is_valid())
            lookup = np.array([ROLE_CODES[roles[n]] for n in names], dtype=np.uint8)
            codes[known] = lookup[found.to_numpy(zero_copy_only=False)[known].astype(np.int64)]
            problem[(problem == 0) & ~known] = 2
        else:
            problem[problem == 0] = 2
        content_values = children.get(content_key)
        if content_values is not None and is_text(content_values.type):
            problem[(problem == 0) & as_mask(content_values.is_null())] = 3
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
            has_any |= as_mask(values.is_valid())
        if has_any.any():
            per_row = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), kept)
            rows_with = np.bincount(parent[has_any], minlength=length) > 0
            meta[f"{field_name}_extra"] = pc.if_else(pa.array(rows_with), per_row, pa.scalar(None, per_row.type))
    return codes, contents, offsets, meta


def _from_conversation(table: pa.Table, **shape: Any) -> Adapted:
    errors = RowErrors(table.num_rows)
    codes, contents, offsets, turn_meta = _conversation(table, errors, **shape)
    field_name = shape["field_name"]
    domain = domain_field(table, errors)
    meta = {**leftovers(table, {field_name, "domain"}), **turn_meta}
    return Adapted(table.num_rows, codes, contents, offsets, errors, domain=domain, meta=meta,
                   category=hint_field(table, "category"), group=hint_field(table, "group"))


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


ADAPTERS: dict[str, Adapter] = {"chat": adapt_chat, "sharegpt": adapt_sharegpt}
