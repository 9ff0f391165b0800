"""What every engine offers the HTTP layer: generate text for a registry version, streamed.

An engine takes version names (aliases are resolved before it) and a prompt; it loads the
version on first use and yields the answer's text piece by piece, then one ``Completion``.
``LocalEngine`` (serve.batching) batches in this process; ``VllmEngine`` drives a vLLM server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from fragua.data.records import Message


class EngineError(RuntimeError):
    """A request the engine cannot serve; the message is safe to show the client."""


class ModelUnavailable(EngineError):
    """The version exists but cannot be loaded or answered with (damaged, missing base, out of memory)."""


class PromptTooLong(EngineError):
    """The prompt plus max_tokens does not fit the model's context or serve.max_prompt_tokens."""


class Overloaded(EngineError):
    """Too many requests are waiting; the client should retry later."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 picks the most likely token (greedy)
    top_p: float = 1.0
    seed: int | None = None  # the same seed, prompt and version give the same answer on the same device
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Prompt:
    """A chat (rendered with the version's chat template) or a plain text to continue."""

    messages: Sequence[Message] | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a prompt is either messages or text")


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class EngineStats:
    """Counters for /metrics and /ready."""

    loaded: list[str] = field(default_factory=list)
    running: int = 0  # requests decoding now
    waiting: int = 0  # requests waiting for a batch slot
    steps: int = 0  # decoding steps since start
    decoded_rows: int = 0  # tokens decoded since start: decoded_rows / steps is the mean batch size


class Engine(Protocol):
    async def load(self, version: str) -> None:
        """Make ``version`` ready to answer (download, verify, load); raises ModelUnavailable."""

    def generate(self, version: str, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TextDelta | Completion]:
        """The answer's text in pieces, then a Completion; raises EngineError subclasses before the
        first piece for requests it cannot take."""

    def stats(self) -> EngineStats: ...

    async def close(self) -> None: ...
