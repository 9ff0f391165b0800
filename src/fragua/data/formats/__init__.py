"""The input formats: one registry of the row formats Fragua reads, in detection order.

Everything that lists formats reads :data:`FORMATS`: detection (:func:`detect_format`), the
dispatch from a format to the family module that adapts it (:mod:`fragua.data.formats.adapt`),
the ``format`` choice of a source in the settings, the "unknown format" errors, and the
README's table of input formats (tests/test_formats.py checks the table against this registry).

The adapters live in one module per family of formats (instruction, conversation, choice,
squad), on the columnar helpers of :mod:`fragua.data.formats.columnar`. This module imports
nothing, not even Arrow: ``fragua.settings`` imports it to build the ``format`` field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class InputFormat:
    """One row format: how it is recognised, which module adapts it, and what the README says about it."""

    name: str  # the value of a source's `format` setting, and the format a manifest reports
    keys: tuple[str, ...]  # a row (or batch) carrying all of these is in this format, unless an earlier format matched
    family: str  # the module of fragua.data.formats that adapts it
    description: str  # the README table's "keys" column: the keys a row carries, and what they may hold


# Detection takes the first format whose keys the rows carry, so the order decides rows that carry
# the keys of several (chat `messages` with leftover `instruction`/`output` fields stay chat): a new
# format goes where it changes no existing file's detection.
FORMATS: tuple[InputFormat, ...] = (
    InputFormat("chat", ("messages",), "conversation", "`messages: [{role: system/user/assistant/tool, content}]`"),
    InputFormat(
        "sharegpt", ("conversations",), "conversation",
        "ShareGPT: `conversations: [{from: system/human/gpt (also user, assistant, tool), value}]`",
    ),
    InputFormat(
        "squad", ("context", "question", "answers"), "squad",
        "SQuAD v1.1/v2.0: `context`, `question`, `answers` (`{text: [...], answer_start: [...]}` as in HF rows, "
        "or the nested file's list); `is_impossible`",
    ),
    InputFormat(
        "head_qa", ("qtext", "answers", "ra"), "choice",
        "HEAD-QA: `qtext`, `answers: [{aid, atext}]`, `ra` (the right `aid`; `qid`, `ra`, `aid` may be strings like `\" 3\"`), "
        "`name`, `year`, `category`",
    ),
    InputFormat(
        "multiple_choice", ("question", "choices", "answer"), "choice",
        "`question`, `choices: [...]`, `answer` (letter, 0-based int, or 1-based string)",
    ),
    InputFormat("alpaca", ("instruction", "output"), "instruction", "`instruction`, `input` (optional), `output`, `system` (optional)"),
    InputFormat("prompt_completion", ("prompt", "completion"), "instruction", "`prompt`, `completion`"),
)
FORMAT_NAMES: tuple[str, ...] = tuple(fmt.name for fmt in FORMATS)


def detect_format(keys: Iterable[str]) -> str | None:
    """The first format whose keys a row (or a batch's column names) has, or None."""
    present = set(keys)
    for fmt in FORMATS:
        if present.issuperset(fmt.keys):
            return fmt.name
    return None
