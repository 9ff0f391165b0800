"""The canonical record every input format becomes, and what the format adapters share about it.

The record types (:class:`Record`, :class:`Message`, :class:`RecordDraft`), why a row is
rejected (:class:`RowError`, :data:`REJECTION_KINDS`), how multiple-choice options are lettered
and rendered, and the content key that decides duplicates. The adapters themselves live in
:mod:`fragua.data.formats`; this module does not import them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fragua.data.textops import conversation_id, hex_id

Role = Literal["system", "user", "assistant", "tool"]
Split = Literal["train", "validation", "test"]
CHOICE_LETTERS = string.ascii_uppercase

# Why a row was not kept; the manifest counts rows per kind.
REJECTION_KINDS = (
    "invalid_utf8", "invalid_json", "not_an_object", "mixed_types", "missing_field", "wrong_type",
    "invalid_value", "empty", "too_short", "too_long", "low_quality", "near_duplicate", "unanswerable", "answer_not_in_context",
    "line_too_long",
)


class RowError(ValueError):
    """A row that cannot become a record; the message is the quarantine reason."""

    def __init__(self, message: str, kind: str = "invalid_value") -> None:
        super().__init__(message)
        self.kind = kind


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


class Record(BaseModel):
    """One training/evaluation example, whatever format it came from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="xxh3-64 of the normalised content, 16 hex digits: equal content, equal id.")
    messages: list[Message]
    choices: list[str] | None = Field(None, description="Options of a multiple-choice question, in display order.")
    answer: str | None = Field(None, description="Reference answer: the option letter for multiple choice, else the answer text.")
    domain: str = "general"
    source: str = Field(description="File (or dataset) the row came from.")
    split: Split = "train"
    origin: str = Field("original", description="'original', or the augmentation strategy that produced the row.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Everything else the row carried, plus lineage such as parent_id.")

    @property
    def group(self) -> str:
        """Rows of one group always land in the same split (e.g. permutations of one question)."""
        return str(self.meta.get("group") or self.meta.get("parent_id") or self.id)

    @property
    def prompt_messages(self) -> list[Message]:
        """The conversation up to, not including, the final assistant answer."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        return self.messages[-1].content


@dataclass
class RecordDraft:
    messages: list[Message]
    choices: list[str] | None = None
    answer: str | None = None
    domain: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    category: str | None = None
    group: str | None = None


def format_choices(question: str, choices: Sequence[str]) -> str:
    options = "\n".join(f"{CHOICE_LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{question}\n{options}"


def multiple_choice_messages(question: str, choices: Sequence[str], index: int) -> list[Message]:
    return [
        Message(role="user", content=format_choices(question, choices)),
        Message(role="assistant", content=f"{CHOICE_LETTERS[index]}. {choices[index]}"),
    ]


def answer_index(answer: Any, n_choices: int) -> int:
    """Index of the correct option from a letter ('B'), a 0-based int, or a 1-based numeric string ('2')."""
    if isinstance(answer, bool):
        raise RowError(f"answer {answer!r} is not an option letter or index")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip().upper() in CHOICE_LETTERS[:n_choices] and len(answer.strip()) == 1:
        index = CHOICE_LETTERS.index(answer.strip().upper())
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip()) - 1
    else:
        raise RowError(f"answer {answer!r} is not an option letter (A-{CHOICE_LETTERS[n_choices - 1]}) or index")
    if not 0 <= index < n_choices:
        raise RowError(f"answer {answer!r} points outside the {n_choices} options")
    return index


def content_key(draft: RecordDraft) -> int:
    """What makes two rows duplicates: roles and normalised message texts (options are part of
    the rendered question), not metadata, hashed to 64 bits. Ingest computes the same batch-wise."""
    return conversation_id([(m.role, m.content) for m in draft.messages])


def record_id(key: int) -> str:
    """The content key as 16 hex digits: equal content, equal id."""
    return hex_id(key)
