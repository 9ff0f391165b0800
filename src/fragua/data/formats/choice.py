"""The multiple-choice formats: generic multiple choice (question/choices/answer) and HEAD-QA (qtext/answers/ra)."""

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
    build_adapted,
    domain_field,
    first_per_row,
    hint_field,
    is_text,
    nonempty,
    table_column,
    text_field,
)
from fragua.data.records import CHOICE_LETTERS, RowError, answer_index
from fragua.data.textops import as_string_array

_LETTERS = pa.array(list(CHOICE_LETTERS), pa.string())


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
    elif is_text(answers.type):
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
    question = text_field(table, "question", errors, required=True)
    column = table_column(table, "choices")
    shape = "field 'choices' must be a list of 2 to 26 options"
    counts = np.zeros(length, dtype=np.int64)
    texts = pa.array([], pa.string())
    if column is None or not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        errors.add(np.ones(length, bool), "missing_field" if column is None or pa.types.is_null(column.type) else "wrong_type", shape)
    else:
        counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
        errors.add((counts < 2) | (counts > len(CHOICE_LETTERS)), "invalid_value", shape)
        flat = column.flatten()
        if is_text(flat.type):
            texts = as_string_array(flat)
            blank = as_mask(flat.is_null()) | ~nonempty(texts)
        else:
            texts = pa.array([""] * len(flat), pa.string())
            blank = np.ones(len(flat), bool)
        bad_rows = np.bincount(np.repeat(np.arange(length), counts)[blank], minlength=length) > 0
        errors.add(bad_rows, "invalid_value", "every option in 'choices' must be a non-empty string")
    offsets = np.zeros(length + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    answers = table_column(table, "answer")
    index = np.zeros(length, dtype=np.int64)
    if answers is None or pa.types.is_null(answers.type):
        errors.add(np.ones(length, bool), "missing_field", "missing field 'answer'")
    else:
        errors.add(as_mask(answers.is_null()), "missing_field", "missing field 'answer'")
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
    domain = domain_field(table, errors)
    columns = _choice_columns(length, question, texts, offsets, index, errors)
    parts = [("user", columns["user"], None), ("assistant", columns["assistant"], None)]
    return build_adapted(table, errors, parts, {"question", "choices", "answer", "domain"},
                    answer=columns["answer"], choices=columns["choices"], domain=domain)


def _integers(values: pa.Array | None, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, usable mask) from integers or numeric strings such as ' 3' (HEAD-QA ids)."""
    numbers = np.full(length, -1, dtype=np.int64)
    if values is None:
        return numbers, np.zeros(length, bool)
    if pa.types.is_integer(values.type):
        usable = as_mask(values.is_valid())
        numbers[usable] = values.filter(pa.array(usable)).to_numpy().astype(np.int64)
        return numbers, usable
    if not is_text(values.type):
        return numbers, np.zeros(length, bool)
    stripped = pc.utf8_trim_whitespace(as_string_array(values))
    usable = as_mask(pc.utf8_is_digit(stripped)) & as_mask(values.is_valid())
    numbers[usable] = pc.cast(stripped.filter(pa.array(usable)), pa.int64()).to_numpy()
    return numbers, usable


def adapt_head_qa(table: pa.Table, options: AdapterOptions) -> Adapted:
    length = table.num_rows
    errors = RowErrors(length)
    question = text_field(table, "qtext", errors, required=True)
    column = table_column(table, "answers")
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
            if atext is not None and is_text(atext.type):
                texts = as_string_array(atext)
                usable = numeric & nonempty(texts) & as_mask(atext.is_valid())
        texts = texts if len(texts) == total else pa.array([""] * total, pa.string())
        aids = aids if len(aids) == total else np.full(total, -1, dtype=np.int64)
        parent = np.repeat(np.arange(length), counts)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        first_bad = first_per_row(~usable, parent, length)
        for row in np.flatnonzero(first_bad >= 0).tolist():
            errors.add_row(row, "invalid_value", f"answers[{first_bad[row] - offsets[row]}] must have a numeric 'aid' and a non-empty 'atext'")
    offsets = np.zeros(length + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    right = table_column(table, "ra")
    wanted, numeric = _integers(right, length)
    unset = np.flatnonzero(~numeric & errors.ok)
    for row in unset.tolist():
        value = right[row].as_py() if right is not None else None
        errors.add_row(row, "missing_field" if value is None else "invalid_value", f"field 'ra' must be the aid of the right answer, got {value!r}")
    parent = np.repeat(np.arange(length), counts)
    match = first_per_row(aids == wanted[parent], parent, length)
    for row in np.flatnonzero((match < 0) & errors.ok).tolist():
        listed = ", ".join(str(a) for a in aids[offsets[row]: offsets[row + 1]].tolist())
        errors.add_row(row, "invalid_value", f"ra {right[row].as_py()!r} matches no answer's aid ({listed})")
    index = np.where(match >= 0, match - offsets[:-1], 0)
    names, qids = hint_field(table, "name"), hint_field(table, "qid")
    group = (
        pc.binary_join_element_wise("head_qa:", pc.utf8_trim_whitespace(names), ":", pc.utf8_trim_whitespace(qids), "")
        if names is not None and qids is not None else pa.nulls(length, pa.string())
    )
    domain = domain_field(table, errors)
    columns = _choice_columns(length, question, texts, offsets, index, errors)
    parts = [("user", columns["user"], None), ("assistant", columns["assistant"], None)]
    adapted = build_adapted(table, errors, parts, {"qtext", "answers", "domain"}, answer=columns["answer"], choices=columns["choices"], domain=domain)
    adapted.group = pc.coalesce(adapted.group, group) if adapted.group is not None else group
    adapted.meta["group"] = adapted.group
    return adapted


ADAPTERS: dict[str, Adapter] = {"multiple_choice": adapt_multiple_choice, "head_qa": adapt_head_qa}
