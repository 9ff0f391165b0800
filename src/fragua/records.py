"""The canonical record and the adapters that turn each input format into it.

Every adapter is a pure function ``row -> RecordDraft`` that raises :class:`RowError` with a
human-readable reason when a row cannot be used. Keys an adapter does not consume are kept
in ``meta`` so that nothing a user gave us is silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
Split = Literal["train", "validation", "test"]
FORMATS = ("alpaca", "prompt_completion", "chat", "multiple_choice")
CHOICE_LETTERS = string.ascii_uppercase


class RowError(ValueError):
    """A row that cannot become a record; the message is the quarantine reason."""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


class Record(BaseModel):
    """One training/evaluation example, whatever format it came from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="sha256 prefix of the normalised content: equal content, equal id.")
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


def _text(row: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _leftovers(row: dict[str, Any], consumed: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in consumed}


def _domain(row: dict[str, Any]) -> str | None:
    value = row.get("domain")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RowError("field 'domain' must be a non-empty string")
    return value.strip()


def from_alpaca(row: dict[str, Any]) -> RecordDraft:
    instruction = _text(row, "instruction")
    extra_input = _text(row, "input", required=False)
    output = _text(row, "output")
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    messages = [Message(role="user", content=prompt), Message(role="assistant", content=output)]
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.insert(0, Message(role="system", content=row["system"]))
    consumed = {"instruction", "input", "output", "system", "domain"}
    return RecordDraft(messages, answer=output, domain=_domain(row), meta=_leftovers(row, consumed))


def from_prompt_completion(row: dict[str, Any]) -> RecordDraft:
    prompt = _text(row, "prompt")
    completion = _text(row, "completion")
    messages = [Message(role="user", content=prompt), Message(role="assistant", content=completion)]
    consumed = {"prompt", "completion", "domain"}
    return RecordDraft(messages, answer=completion, domain=_domain(row), meta=_leftovers(row, consumed))


def from_chat(row: dict[str, Any]) -> RecordDraft:
    raw = row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RowError("field 'messages' must be a non-empty list of {role, content}")
    messages = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RowError(f"messages[{index}] must be an object with 'role' and 'content'")
        role, content = item.get("role"), item.get("content")
        if role not in ("system", "user", "assistant", "tool"):
            raise RowError(f"messages[{index}].role {role!r} is not one of system, user, assistant, tool")
        if not isinstance(content, str):
            raise RowError(f"messages[{index}].content must be a string, got {type(content).__name__}")
        messages.append(Message(role=role, content=content))
    if messages[-1].role != "assistant":
        raise RowError("the last message must be the assistant's answer (role 'assistant')")
    if not any(m.role == "user" for m in messages):
        raise RowError("the conversation has no 'user' message")
    consumed = {"messages", "domain"}
    return RecordDraft(messages, answer=messages[-1].content, domain=_domain(row), meta=_leftovers(row, consumed))


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


def format_choices(question: str, choices: list[str]) -> str:
    options = "\n".join(f"{CHOICE_LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{question}\n{options}"


def multiple_choice_messages(question: str, choices: list[str], index: int) -> list[Message]:
    return [
        Message(role="user", content=format_choices(question, choices)),
        Message(role="assistant", content=f"{CHOICE_LETTERS[index]}. {choices[index]}"),
    ]


def from_multiple_choice(row: dict[str, Any]) -> RecordDraft:
    question = _text(row, "question")
    choices = row.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise RowError("field 'choices' must be a list of 2 to 26 options")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise RowError("every option in 'choices' must be a non-empty string")
    if "answer" not in row:
        raise RowError("missing field 'answer'")
    index = answer_index(row["answer"], len(choices))
    consumed = {"question", "choices", "answer", "domain"}
    return RecordDraft(
        multiple_choice_messages(question, choices, index),
        choices=list(choices),
        answer=CHOICE_LETTERS[index],
        domain=_domain(row),
        meta=_leftovers(row, consumed),
    )


ADAPTERS: dict[str, Callable[[dict[str, Any]], RecordDraft]] = {
    "alpaca": from_alpaca,
    "prompt_completion": from_prompt_completion,
    "chat": from_chat,
    "multiple_choice": from_multiple_choice,
}

_SIGNATURES: dict[str, set[str]] = {
    "chat": {"messages"},
    "multiple_choice": {"question", "choices", "answer"},
    "alpaca": {"instruction", "output"},
    "prompt_completion": {"prompt", "completion"},
}


def detect_format(row: dict[str, Any]) -> str | None:
    """The first format whose required keys the row has, or None."""
    keys = set(row)
    for name, required in _SIGNATURES.items():
        if required <= keys:
            return name
    return None


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def content_key(draft: RecordDraft) -> str:
    """What makes two rows duplicates: normalised messages and options, not metadata."""
    payload = {
        "messages": [[m.role, normalise(m.content)] for m in draft.messages],
        "choices": [normalise(c) for c in draft.choices] if draft.choices else None,
    }
    return json.dumps(payload, ensure_ascii=False, sort_keys=True)


def record_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]
