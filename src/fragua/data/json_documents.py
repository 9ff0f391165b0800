"""JSON documents: a plain list of rows, ``{"data": [rows]}``, a SQuAD file, a HEAD-QA file.

A document up to ``data.max_line_bytes`` is parsed whole and its layout recognised; a larger
one is read only as a list of rows, one element at a time from a bounded buffer, so that
memory does not grow with the file.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, Iterator

import orjson

from fragua.data.records import RowError
from fragua.data.sources import IngestError


def load_document(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from exc
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise IngestError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from exc


Located = tuple[str, "dict[str, Any] | RowError"]


def _squad_rows(document: dict[str, Any]) -> Iterator[Located]:
    """SQuAD v1.1/v2.0 data[].paragraphs[].qas[] -> one flat HF-style row per question."""
    for i, article in enumerate(document["data"]):
        where = f"data[{i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            yield where, RowError(f"{where} must be an object with a 'paragraphs' list", "invalid_value")
            continue
        for j, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                yield where, RowError(f"{where} must be an object with 'context' and a 'qas' list", "invalid_value")
                continue
            for k, qa in enumerate(paragraph["qas"]):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                if not isinstance(qa, dict):
                    yield where, RowError("expected a JSON object", "not_an_object")
                    continue
                row = {"title": article.get("title"), "context": paragraph.get("context"), **qa}
                answers = qa.get("answers")
                if isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
                    row["answers"] = {"text": [a.get("text") for a in answers], "answer_start": [a.get("answer_start") for a in answers]}
                if isinstance(qa.get("plausible_answers"), list):
                    row["plausible_answers"] = [a.get("text") if isinstance(a, dict) else a for a in qa["plausible_answers"]]
                yield where, row


def _head_qa_rows(document: dict[str, Any]) -> Iterator[Located]:
    """HEAD-QA {"exams": {key: {name, year, category, data: [...]}}} -> one flat row per question."""
    shared = {k: v for k, v in document.items() if k in ("language", "version")}
    for key, exam in document["exams"].items():
        where = f"exams.{key}"
        if not isinstance(exam, dict) or not isinstance(exam.get("data"), list):
            yield where, RowError(f"{where} must be an object with a 'data' list of questions", "invalid_value")
            continue
        about = {"name": exam.get("name", key), "year": exam.get("year"), "category": exam.get("category")}
        for i, question in enumerate(exam["data"]):
            location = f"{where}.data[{i}]"
            if isinstance(question, dict):
                yield location, {**shared, **about, **question}
            else:
                yield location, RowError("expected a JSON object", "not_an_object")


def document_rows(path: Path, document: Any) -> Iterator[Located]:
    if isinstance(document, dict) and isinstance(document.get("exams"), dict):
        yield from _head_qa_rows(document)
    elif isinstance(document, dict) and isinstance(document.get("data"), list) and any(
        isinstance(item, dict) and "paragraphs" in item for item in document["data"][:10]
    ):
        yield from _squad_rows(document)
    elif isinstance(document, dict) and isinstance(document.get("data"), list):
        for index, item in enumerate(document["data"]):
            yield f"data[{index}]", item if isinstance(item, dict) else RowError(f"expected a JSON object, got {type(item).__name__}", "not_an_object")
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield f"[{index}]", item if isinstance(item, dict) else RowError(f"expected a JSON object, got {type(item).__name__}", "not_an_object")
    else:
        raise IngestError(
            f"{path}: expected a JSON list of rows, an object with a 'data' list (SQuAD: data[].paragraphs[].qas[]), "
            "or a HEAD-QA object with 'exams'"
        )


STREAM_READ = 1 << 20
_NON_SPACE = re.compile(r"\S")


def streamed_list(path: Path, max_line_bytes: int) -> Iterator[Located]:
    """The rows of a JSON list too large to load whole, decoded one element at a time from a
    bounded buffer; an element longer than ``max_line_bytes`` (or any other shape of document)
    is refused, naming its byte offset."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        offset = len(codecs.BOM_UTF8) if handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0  # of text[0] in the file
        handle.seek(offset)
        read, text, position, at_end = offset, "", 0, False

        def more() -> None:
            """Drop what is parsed, then read on: at least as much as is buffered, so a long element costs linear time."""
            nonlocal offset, read, text, position, at_end
            raw = handle.read(max(STREAM_READ, len(text) - position))
            try:
                decoded = utf8.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise IngestError(f"{path}: not valid UTF-8 (byte {read + exc.start}); save it as UTF-8") from exc
            read += len(raw)
            offset = where()
            text, position, at_end = text[position:] + decoded, 0, not raw

        def where(at: int | None = None) -> int:
            """The file offset of text[at] (default: of the parse position)."""
            return offset + len(text[: position if at is None else at].encode())

        def next_char() -> str:
            nonlocal position
            while not (found := _NON_SPACE.search(text, position)):
                position = len(text)
                if at_end:
                    return ""
                more()
            position = found.start()
            return text[position]

        def refuse(what: str, at: int | None = None) -> IngestError:
            return IngestError(f"{path}: byte {where(at)}: {what}")

        def element(index: int) -> Any:
            """List element ``index``, at the parse position; one longer than the limit cannot be
            skipped without parsing it, so it refuses the file."""
            nonlocal position

            def too_long() -> IngestError:
                return refuse(f"element [{index}] of the list is longer than data.max_line_bytes={max_line_bytes}; "
                              "raise data.max_line_bytes to read it, or write the rows as JSONL")

            while True:
                try:
                    value, end = decoder.raw_decode(text, position)
                    if end - position > max_line_bytes:
                        raise too_long()
                    if end < len(text) or at_end:  # a number at the buffer's end may go on
                        position = end
                        return value
                except json.JSONDecodeError as exc:
                    if at_end:
                        raise refuse(f"invalid JSON in element [{index}] ({exc.msg})", exc.pos) from exc
                if len(text) - position > max_line_bytes:
                    raise too_long()
                more()

        first = next_char()
        if first != "[":
            size = path.stat().st_size
            raise refuse(f"the file ({size} bytes) is larger than data.max_line_bytes={max_line_bytes} and starts with {first!r}: "
                         "a .json file that large is read only as a list of rows, one at a time; write the rows as JSONL "
                         "or raise data.max_line_bytes to load it whole")
        position += 1
        index = 0
        if next_char() != "]":
            while True:
                if not next_char():
                    raise refuse(f"the file ends inside the list, before element [{index}] (truncated?)")
                item = element(index)
                yield f"[{index}]", item if isinstance(item, dict) else RowError(f"expected a JSON object, got {type(item).__name__}", "not_an_object")
                index += 1
                separator = next_char()
                if separator == "]":
                    break
                if not separator:
                    raise refuse(f"the file ends inside the list, after element [{index - 1}] (truncated?)")
                if separator != ",":
                    raise refuse(f"invalid JSON: expected ',' or ']' after element [{index - 1}]")
                position += 1
        position += 1
        if next_char():
            raise refuse("invalid JSON: more data after the list")
