"""The canonical record, and the row-level face of the format adapters.

Ingest converts whole Arrow batches at a time (:mod:`fragua.adapters`); the functions here
run the same adapters on a single row, for callers holding one example (tests, an API).
Keys an adapter does not consume are kept in ``meta`` so that nothing a user gave us is
silently dropped.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .textops import conversation_id, hex_id

Role = Literal["system", "user", "assistant", "tool"]
Split = Literal["train", "validation", "test"]
# In the order an "unknown format" message lists them.
FORMATS = ("alpaca", "prompt_completion", "chat", "multiple_choice", "sharegpt", "squad", "head_qa")
CHOICE_LETTERS = string.ascii_uppercase

# Why a row was not kept; the manifest counts rows per kind.
REJECTION_KINDS = (
    "invalid_utf8", "invalid_json", "not_an_object", "mixed_types", "missing_field", "wrong_type",
    "invalid_value", "empty", "too_short", "too_long", "low_quality", "near_duplicate", "unanswerable", "answer_not_in_context",
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


_SIGNATURES: dict[str, set[str]] = {
    "chat": {"messages"},
    "sharegpt": {"conversations"},
    "squad": {"context", "question", "answers"},
    "head_qa": {"qtext", "answers", "ra"},
    "multiple_choice": {"question", "choices", "answer"},
    "alpaca": {"instruction", "output"},
    "prompt_completion": {"prompt", "completion"},
}


def detect_format(row: dict[str, Any] | Sequence[str]) -> str | None:
    """The first format whose required keys the row (or a batch's column names) has, or None."""
    keys = set(row)
    for name, required in _SIGNATURES.items():
        if required <= keys:
            return name
    return None


def adapt_row(row: dict[str, Any], format: str = "auto", **options: Any) -> RecordDraft:
    """One row in any supported format -> a draft record, or RowError with the reason."""
    from .adapters import AdapterOptions, adapt_rows

    if format == "auto":
        format = detect_format(row) or ""
        if not format:
            raise RowError(f"no known format has the keys {sorted(row)}; tried {', '.join(FORMATS)}", "missing_field")
    drafts = adapt_rows([row], format, AdapterOptions(**options))
    if isinstance(drafts[0], RowError):
        raise drafts[0]
    return drafts[0]


def from_alpaca(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "alpaca")


def from_prompt_completion(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "prompt_completion")


def from_chat(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "chat")


def from_sharegpt(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "sharegpt")


def from_squad(row: dict[str, Any], **options: Any) -> RecordDraft:
    return adapt_row(row, "squad", **options)


def from_head_qa(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "head_qa")


def from_multiple_choice(row: dict[str, Any]) -> RecordDraft:
    return adapt_row(row, "multiple_choice")


def content_key(draft: RecordDraft) -> int:
    """What makes two rows duplicates: roles and normalised message texts (options are part of
    the rendered question), not metadata, hashed to 64 bits. Ingest computes the same batch-wise."""
    return conversation_id([(m.role, m.content) for m in draft.messages])


def record_id(key: int) -> str:
    """The content key as 16 hex digits: equal content, equal id."""
    return hex_id(key)
