"""Vectorised text operations on Arrow string arrays, the hot path of ingest.

Per-row Python costs several microseconds a row; these functions work on whole Arrow
buffers (numpy over the bytes, Arrow compute kernels) so that a million rows take seconds.
The scalar helpers (:func:`normalise`, :func:`conversation_id`) run the very same code on one
value, so there is one definition of "normalised" and "duplicate", not two.
"""

from __future__ import annotations

import binascii
from typing import Any, Iterable, Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

# ASCII upper case -> lower case, ASCII whitespace (\t \n \v \f \r) -> space; bytes of
# multi-byte UTF-8 sequences are >= 0x80 and pass through unchanged.
_FOLD = bytearray(range(256))
_FOLD[ord("A"): ord("Z") + 1] = bytes(range(ord("a"), ord("z") + 1))
for _byte in (9, 10, 11, 12, 13):
    _FOLD[_byte] = 32
_FOLD = bytes(_FOLD)
_SPACE = np.uint8(32)
# Unicode whitespace that is not ASCII: NEL and the separator categories (no-break space, em space, ...).
_UNICODE_SPACE = r"[\x{85}\p{Z}]"
_CONTROL = r"[\x{0}-\x{1f}]"

ROLE_CODES = {"system": 1, "user": 2, "assistant": 3, "tool": 4}


def as_string_array(values: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """A single-chunk ``string`` array with nulls as empty strings."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    if values.null_count:
        values = pc.fill_null(values, "")
    return values


def _buffers(values: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets from 0) of a string array, without copying the bytes."""
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=n + 1, offset=values.offset * 4).astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8, count=end - start, offset=start) if end > start else np.empty(0, np.uint8)
    return data, offsets - start


def _drop(data: np.ndarray, offsets: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove the bytes at sorted ``positions`` and shift the offsets accordingly."""
    if not len(positions):
        return data, offsets
    return np.delete(data, positions), offsets - np.searchsorted(positions, offsets)


def normalised_bytes(values: pa.Array | pa.ChunkedArray, ascii: pa.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each string lower-cased, whitespace runs collapsed to one space, ends trimmed.

    Returns the normalised bytes of all strings back to back and their offsets. Strings
    with non-ASCII text go through Arrow's Unicode lower-casing first; the rest is
    byte-level. ``ascii``: ``string_is_ascii`` of the values, when the caller has it.
    """
    values = as_string_array(values)
    ascii = pc.string_is_ascii(values) if ascii is None else ascii
    if len(values) and not pc.all(ascii).as_py():
        unicode_rows = pc.invert(ascii)
        fixed = pc.replace_substring_regex(pc.utf8_lower(values.filter(unicode_rows)), _UNICODE_SPACE, " ")
        values = pc.replace_with_mask(values, unicode_rows, fixed)
    raw, offsets = _buffers(values)
    folded = raw.tobytes().translate(_FOLD)
    data = np.frombuffer(folded, dtype=np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    nonempty = ends > starts
    drop = [starts[nonempty][data[starts[nonempty]] == _SPACE]]  # leading spaces
    if b"  " in folded:  # the second and later spaces of each run
        space = data == _SPACE
        drop.append(np.flatnonzero(space[1:] & space[:-1]) + 1)
    # Trailing spaces: only strings ending in a space, usually few, need a look.
    for row in np.flatnonzero(nonempty)[data[ends[nonempty] - 1] == _SPACE].tolist():
        kept = len(folded[starts[row]: ends[row]].rstrip(b" "))
        drop.append(np.arange(starts[row] + kept, ends[row]))
    positions = np.unique(np.concatenate(drop)) if len(drop) > 1 else drop[0]
    return _drop(data, offsets, positions)


def normalise(text: str) -> str:
    """The normalisation duplicates are judged by, for one string."""
    data, _ = normalised_bytes(pa.array([text], pa.string()))
    return data.tobytes().decode("utf-8")


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def conversation_ids(data: np.ndarray, offsets: np.ndarray, role_codes: np.ndarray, message_offsets: np.ndarray) -> np.ndarray:
    """A 64-bit id per row: xxh3 of the row's normalised message texts, seeded with its roles
    and message boundaries (so "ab" + "c" and "a" + "bc", or a user and an assistant turn, differ).

    ``data``/``offsets``: the normalised messages (:func:`normalised_bytes`); ``message_offsets``
    (rows + 1): where each row's messages start.
    """
    count = len(role_codes)
    rows = len(message_offsets) - 1
    per_row = np.diff(message_offsets)
    parent = np.repeat(np.arange(rows), per_row)
    turn = np.arange(count) - message_offsets[:-1][parent]
    sizes = np.diff(offsets).astype(np.uint64)
    mixed = _splitmix64(role_codes.astype(np.uint64) ^ (sizes << np.uint64(8)) ^ (turn.astype(np.uint64) << np.uint64(48)))
    seeds = np.zeros(rows, dtype=np.uint64)
    talking = per_row > 0
    if talking.any():
        seeds[talking] = np.bitwise_xor.reduceat(mixed, message_offsets[:-1][talking])
    seeds = _splitmix64(seeds ^ per_row.astype(np.uint64))
    view = memoryview(data)
    bounds = offsets[message_offsets].tolist()
    seed_values = seeds.tolist()
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(view[bounds[i]: bounds[i + 1]], seed_values[i]) for i in range(rows)), dtype=np.uint64, count=rows)


def conversation_id(messages: Sequence[tuple[str, str]]) -> int:
    """:func:`conversation_ids` of one conversation: what its record id and duplicate check use."""
    data, offsets = normalised_bytes(pa.array([content for _, content in messages], pa.string()))
    codes = np.array([ROLE_CODES[role] for role, _ in messages], dtype=np.uint8)
    return int(conversation_ids(data, offsets, codes, np.array([0, len(messages)], dtype=np.int64))[0])


def conversation_texts(data: np.ndarray, offsets: np.ndarray, message_offsets: np.ndarray, rows: Iterable[int]) -> list[str]:
    """The normalised messages of some rows, one text per row, messages on separate lines."""
    texts = []
    for row in rows:
        first, last = message_offsets[row], message_offsets[row + 1]
        texts.append("\n".join(data[offsets[i]: offsets[i + 1]].tobytes().decode("utf-8") for i in range(first, last)))
    return texts


def hex_ids(ids: np.ndarray) -> pa.StringArray:
    """uint64 ids as 16-character lower-case hex strings."""
    count = len(ids)
    hexed = binascii.hexlify(ids.astype(">u8").tobytes())
    offsets = np.arange(0, 16 * count + 1, 16, dtype=np.int32)
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets.tobytes()), pa.py_buffer(hexed))


def hex_id(value: int) -> str:
    return f"{value:016x}"


# JSON objects, column by column --------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        # Binary payloads (e.g. HEAD-QA images) would bloat every row's meta; keep their size.
        return f"<{len(value)} bytes>"
    return str(value)


def python_json(values: Iterable[Any]) -> list[str | None]:
    return [None if v is None else orjson.dumps(v, default=_json_default, option=orjson.OPT_SORT_KEYS).decode() for v in values]


def json_values(values: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """Each value as JSON text, exactly as orjson writes it (keys sorted); null stays null.

    Text, integers, booleans and lists/objects of them are encoded column-wise; other types
    (floats, timestamps, binary) per value with orjson, so either way the text is the same.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    kind = values.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = values.cast(pa.string())
        escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
        quoted = pc.binary_join_element_wise('"', escaped, '"', "")
        control = pc.fill_null(pc.match_substring_regex(values, _CONTROL), False)
        if pc.any(control).as_py():
            exact = pa.array(python_json(values.filter(control).to_pylist()), pa.string())
            quoted = pc.replace_with_mask(quoted, control, exact)
        return quoted
    if pa.types.is_integer(kind):
        return values.cast(pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(values, "true", "false")
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        counts = pc.fill_null(pc.list_value_length(values), 0).to_numpy().astype(np.int64)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        items = pc.fill_null(json_values(values.flatten()), "null")
        listed = pa.ListArray.from_arrays(offsets, items, mask=values.is_null())
        return pc.binary_join_element_wise("[", pc.binary_join(listed, ","), "]", "")
    if pa.types.is_struct(kind):
        fields = sorted(zip([f.name for f in kind], values.flatten()), key=lambda item: item[0])
        if not fields:
            body = pa.array([""] * len(values), pa.string())
        else:
            pieces = [pc.binary_join_element_wise(orjson.dumps(name).decode() + ":", pc.fill_null(json_values(child), "null"), "") for name, child in fields]
            body = pc.binary_join_element_wise(*pieces, ",") if len(pieces) > 1 else pieces[0]
        encoded = pc.binary_join_element_wise("{", body, "}", "")
        return pc.if_else(values.is_valid(), encoded, pa.scalar(None, pa.string()))
    return pa.array(python_json(values.to_pylist()), pa.string())


def json_objects(fields: dict[str, pa.Array], length: int) -> pa.StringArray:
    """One JSON object per row from named columns, keys sorted, null values left out."""
    pieces = []
    for name in sorted(fields):
        prefix = orjson.dumps(name).decode() + ":"
        pieces.append(pc.binary_join_element_wise(prefix, json_values(fields[name]), ""))
    if not pieces:
        return pa.array(["{}"] * length, pa.string())
    body = pc.binary_join_element_wise(*pieces, ",", null_handling="skip")
    return pc.binary_join_element_wise("{", body, "}", "")
