"""Strict reading of a JSON request body, before FastAPI and pydantic see it.

Python's ``json`` accepts what the queue cannot store or hash: lone UTF-16 surrogates
(``"\\ud800"``), ``NaN``/``Infinity``, integers of any size and nesting up to the interpreter's
recursion limit. ``check_json_body`` refuses those with FastAPI-style errors whose ``loc`` names
the field, e.g. ``["body", "messages", 0, "content"]``, and never quotes the bad value itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# No field of a valid body nests deeper than this outside ``meta`` (batch -> examples -> example
# -> messages -> message is 5); deeper input is refused before anything recurses into it.
STRUCTURE_DEPTH = 8
MAX_ERRORS = 20

Loc = tuple[str | int, ...]


class Refused:
    """A number literal the queue cannot store, kept in place so the walk can say where it was."""

    def __init__(self, msg: str, kind: str) -> None:
        self.msg = msg
        self.kind = kind


def _literal(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}…({len(text)} characters)"


def _integer(text: str) -> int | Refused:
    # Checked on the literal, so a 100,000-digit number costs nothing (and never meets
    # Python's 4,300-digit conversion limit).
    digits = len(text.lstrip("-"))
    value = int(text) if digits <= 20 else None
    if value is None or not INT64_MIN <= value <= INT64_MAX:
        return Refused(f"integer {_literal(text)} is outside the 64-bit range (-2**63 to 2**63-1); send it as a string", "int_out_of_range")
    return value


def _float(text: str) -> float | Refused:
    value = float(text)
    if not math.isfinite(value):
        return Refused(f"number {_literal(text)} is too large for a 64-bit float; send it as a string", "float_out_of_range")
    return value


def _constant(name: str) -> Refused:
    return Refused(f"{name} is not a JSON number; send a finite number, null or a string", "float_not_finite")


def _bad_unicode(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: a lone surrogate \\u{ord(text[exc.start]):04x} at character {exc.start}; send UTF-8 text"
    return None


def printable(text: str) -> str:
    """``text`` with any lone surrogate written as its ``\\uXXXX`` escape, safe to put in a response."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(loc: Loc, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": [printable(p) if isinstance(p, str) else p for p in loc], "msg": msg, "type": kind}


def parse(body: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """The parsed body and the problems of its text (bad UTF-8, bad JSON, nesting too deep to parse)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [_error(("body",), f"not valid UTF-8 at byte {exc.start}; send the body as UTF-8", "json_invalid")]
    try:
        return json.loads(text, parse_int=_integer, parse_float=_float, parse_constant=_constant), []
    except json.JSONDecodeError as exc:
        return None, [_error(("body", exc.pos), f"JSON decode error: {exc.msg}", "json_invalid")]
    except RecursionError:
        return None, [_error(("body",), "JSON nested too deeply to read", "json_too_deep")]


def check_json_body(body: bytes, *, max_meta_depth: int) -> list[dict[str, Any]]:
    """Problems of a JSON body, first ones first (at most MAX_ERRORS); empty when FastAPI may read it.

    ``meta`` objects may nest ``max_meta_depth`` levels (the object itself is level 1); the rest
    of the body at most STRUCTURE_DEPTH."""
    value, errors = parse(body)
    return errors or _value_problems(value, ("body",), max_meta_depth=max_meta_depth, in_meta=False)


def meta_problems(text: str, *, max_meta_depth: int) -> tuple[Any, list[dict[str, Any]]]:
    """A ``meta`` value given as JSON text (``fragua add --meta``), parsed, and its problems under
    the API's rules, located from ``meta``."""
    value, errors = parse(text.encode("utf-8", "surrogateescape"))
    errors = [{**error, "loc": ["meta", *error["loc"][1:]]} for error in errors]
    return value, errors or _value_problems(value, ("meta",), max_meta_depth=max_meta_depth, in_meta=True)


def _value_problems(value: Any, root: Loc, *, max_meta_depth: int, in_meta: bool) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    # (value, where, containers above it: within meta when in_meta, else from the body's top, in_meta)
    stack: list[tuple[Any, Loc, int, bool]] = [(value, root, 0, in_meta)]
    while stack and len(errors) < MAX_ERRORS:
        node, loc, depth, in_meta = stack.pop()
        if isinstance(node, Refused):
            errors.append(_error(loc, node.msg, node.kind))
        elif isinstance(node, str):
            if (problem := _bad_unicode(node)) is not None:
                errors.append(_error(loc, problem, "string_unicode"))
        elif isinstance(node, (dict, list)):
            depth += 1
            if in_meta and depth > max_meta_depth:
                errors.append(_error(loc, f"meta nested deeper than intake.max_meta_depth ({max_meta_depth} levels)", "too_deep"))
                continue
            if not in_meta and depth > STRUCTURE_DEPTH:
                errors.append(_error(loc, f"nested deeper than a request body can be ({STRUCTURE_DEPTH} levels outside meta)", "too_deep"))
                continue
            children: list[tuple[Any, Loc, int, bool]] = []
            if isinstance(node, dict):
                for key, child in node.items():
                    if (problem := _bad_unicode(key)) is not None:
                        errors.append(_error((*loc, key), f"key {problem}", "string_unicode"))
                    enters_meta = key == "meta" and not in_meta
                    children.append((child, (*loc, key), 0 if enters_meta else depth, in_meta or enters_meta))
            else:
                children = [(child, (*loc, i), depth, in_meta) for i, child in enumerate(node)]
            stack.extend(reversed(children))
    return errors[:MAX_ERRORS]
