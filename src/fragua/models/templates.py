"""Chat templates and the tokenisation that trains on assistant tokens only.

Pure functions over a tokenizer: they never load models, so they are tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from fragua.data.records import Message

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
IGNORE_INDEX = -100

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used to mask prompts (see message)."""


def ensure_chat_template(tokenizer: Any) -> list[str]:
    """Give a template-less tokenizer ChatML (saved with it later) and a pad token.

    Returns the special tokens that had to be added; the caller must resize the model's
    embeddings and train those rows when the list is not empty.
    """
    added: list[str] = []
    if not tokenizer.chat_template:
        missing = [t for t in (IM_START, IM_END) if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
            added.extend(missing)
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.eos_token is None:
        tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return added


def _render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def assistant_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (with its end marker)."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise TemplateError(
                "the tokenizer's chat template renders a conversation differently from its prefixes, "
                "so the assistant turns cannot be located; set a template without history-dependent "
                "rewriting (e.g. ChatML) on the tokenizer"
            )
        spans.append((len(before), len(through)))
    return full, spans


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def encode_conversation(tokenizer: Any, messages: Sequence[Message], max_length: int) -> Encoded:
    """Token ids of the whole conversation; labels are -100 except on assistant turns."""
    text, spans = assistant_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoding["input_ids"]
    labels = [
        token if any(start < end_span and end > start_span for start_span, end_span in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, encoding["offset_mapping"])
    ]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def generation_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """What the model sees when asked to answer: the conversation plus the assistant header."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def stop_token_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids(IM_END)
    if end is not None and end != tokenizer.unk_token_id:
        ids.add(end)
    return sorted(i for i in ids if i is not None)
