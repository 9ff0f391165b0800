"""SQuAD v1.1/v2.0 rows (context/question/answers), flat as in HF datasets or from the nested file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from fragua.data.formats.columnar import (
    Adapted,
    Adapter,
    AdapterOptions,
    RowErrors,
    as_mask,
    build_adapted,
    domain_field,
    first_per_row,
    is_text,
    nonempty,
    table_column,
    text_field,
)
from fragua.data.textops import as_string_array


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
        return None, None, as_mask(column.is_valid())
    if not (pa.types.is_list(texts.type) and (is_text(texts.type.value_type) or pa.types.is_null(texts.type.value_type))):
        return None, None, as_mask(column.is_valid())
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
    context = text_field(table, "context", errors, required=True)
    question = text_field(table, "question", errors, required=True)
    texts, starts, malformed = _answer_texts(table_column(table, "answers"), length)
    errors.add(malformed, "wrong_type", "field 'answers' must be {text: [...], answer_start: [...]} or a list of {text, answer_start}")
    first = np.full(length, -1, dtype=np.int64)
    flat = pa.array([], pa.string())
    if texts is not None:
        counts = pc.fill_null(pc.list_value_length(texts), 0).to_numpy().astype(np.int64)
        flat = as_string_array(texts.flatten()) if is_text(texts.type.value_type) else pa.array([""] * int(counts.sum()), pa.string())
        first = first_per_row(nonempty(flat), np.repeat(np.arange(length), counts), length)
        if starts is not None:
            _check_answer_starts(context, flat, starts, first, np.concatenate([[0], np.cumsum(counts)]), errors)
    impossible = table_column(table, "is_impossible")
    flagged = as_mask(impossible) if impossible is not None and pa.types.is_boolean(impossible.type) else np.zeros(length, bool)
    unanswerable = (flagged | (first < 0)) & ~malformed
    target = pa.concat_arrays([flat, pa.array([options.no_answer_text], pa.string())]).take(pa.array(np.where(unanswerable | (first < 0), len(flat), first)))
    if options.squad_unanswerable == "drop":
        errors.add(unanswerable, "unanswerable", "unanswerable question (no answer in the context); data.squad_unanswerable = 'drop'")
    groups = pa.array([f"squad:{xxhash.xxh3_64_hexdigest(c.strip().encode())}" for c in context.to_pylist()], pa.string())
    prompt = pc.binary_join_element_wise("Context: ", context, "\n\nQuestion: ", question, "")
    domain = domain_field(table, errors)
    parts = [("user", prompt, None), ("assistant", target, None)]
    adapted = build_adapted(table, errors, parts, {"context", "question", "domain"}, answer=target, domain=domain,
                       near_text=pc.binary_join_element_wise(question, target, "\n"), unanswerable=unanswerable)
    adapted.group = pc.coalesce(adapted.group, groups) if adapted.group is not None else groups
    adapted.meta["group"] = adapted.group
    return adapted


ADAPTERS: dict[str, Adapter] = {"squad": adapt_squad}
