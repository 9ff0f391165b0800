"""The request bodies of the OpenAI API that `fragua serve` speaks, and what they become for an engine.

Fields OpenAI defines and Fragua implements are checked strictly (a bad value is a 400 naming the
parameter); fields OpenAI does not define are ignored, as OpenAI does; fields it defines that
Fragua cannot honour (tools, logprobs, penalties, images...) are refused rather than dropped, so a
client never gets an answer that silently ignored what it asked for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator, model_validator

from fragua.data.records import Message
from fragua.serve.engine import Prompt, SamplingParams
from fragua.serve.errors import ApiError
from fragua.settings.serve import ServeSettings

MAX_STOP = 4
TEXT_LIMIT = 10_000_000  # the body size limit (serve.max_body_bytes) is the real bound
# OpenAI fields Fragua does not implement, with the values that ask for nothing (so clients that
# always send them, e.g. `presence_penalty: 0`, still work).
# null always asks for nothing.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "response_format": ({"type": "text"},),
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
}


def refuse_unsupported(data: Any) -> Any:
    """400 for an OpenAI parameter Fragua cannot honour, unless its value asks for nothing."""
    if isinstance(data, dict):
        for name, harmless in UNSUPPORTED.items():
            value = data.get(name)
            # type too: False == 0, but `logprobs: 0` is not what a client meaning "off" sends
            if value is not None and not any(value == ok and type(value) is type(ok) for ok in harmless):
                raise ApiError(400, f"{name} is not supported by fragua serve; leave it out", param=name, code="unsupported_parameter")
    return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = Field(False, description="Send the token counts in a last chunk before [DONE].")


class GenerationRequest(BaseModel):
    """What chat and text completions share. Types are strict, as OpenAI's: ``"stream": "yes"`` or
    ``"max_tokens": "8"`` are 400s, not guesses."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, min_length=1, max_length=200, description="An alias (production, canary, ...) or a version name; serve.default_model when absent.")
    temperature: StrictFloat | None = Field(None, ge=0, le=2, description="0 picks the most likely token; higher values sample more freely (default 1).")
    top_p: StrictFloat | None = Field(None, gt=0, le=1, description="Sample only from the most likely tokens whose probabilities add up to top_p (default 1).")
    max_tokens: StrictInt | None = Field(None, ge=1, description="Most tokens to generate (at most serve.max_tokens_limit; default serve.default_max_tokens).")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, description="The newer name of max_tokens; wins when both are given.")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP} texts that end the answer (not included in it).")
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1, description="Same seed, prompt and version: the same answer on the same device.")
    n: StrictInt = Field(1, description="Answers per request; only 1 is supported.")
    user: StrictStr | None = Field(None, max_length=256, description="The end user's id: a canary keeps each user on one version.")
    stream: StrictBool = Field(False, description="Send the answer as server-sent events while it is generated.")
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        return refuse_unsupported(data)

    @field_validator("n")
    @classmethod
    def _one_answer(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"only n=1 is supported (got {value}); send separate requests for more answers")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not stop for stop in stops):
            raise ValueError("a stop sequence cannot be empty")
        return value

    def sampling(self, settings: ServeSettings) -> SamplingParams:
        """The engine's sampling parameters; max_tokens checked against serve.max_tokens_limit."""
        name, asked = ("max_completion_tokens", self.max_completion_tokens) if self.max_completion_tokens is not None else ("max_tokens", self.max_tokens)
        if asked is not None and asked > settings.max_tokens_limit:
            raise ApiError(400, f"{name} is {asked}, above this server's limit of {settings.max_tokens_limit} (serve.max_tokens_limit)", param=name, code="invalid_value")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return SamplingParams(
            max_tokens=asked if asked is not None else settings.default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=tuple(stops),
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = Field(None, max_length=TEXT_LIMIT)

    @model_validator(mode="after")
    def _text_only(self) -> "TextPart":
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content parts are supported, got type {self.type!r}")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] = Field(description="The message's text, or a list of text parts.")

    def as_message(self) -> Message:
        text = self.content if isinstance(self.content, str) else "".join(part.text or "" for part in self.content)
        # OpenAI's newer name for the system prompt
        return Message(role="system" if self.role == "developer" else self.role, content=text)


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000, description="The conversation so far; the answer continues it.")

    def prompt(self) -> Prompt:
        return Prompt(messages=[m.as_message() for m in self.messages])


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] = Field(description="The text to continue (a list holding one text is accepted too).")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"give one prompt per request (got a list of {len(value)})")
        return value

    def text_prompt(self) -> Prompt:
        return Prompt(text=self.prompt if isinstance(self.prompt, str) else self.prompt[0])


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=100, description="The id of the answer rated (chatcmpl-… or cmpl-…).")
    rating: Literal[-1, 1] = Field(description="-1 bad, 1 good.")
    correction: str | None = Field(
        None, min_length=1, max_length=TEXT_LIMIT,
        description="What the answer should have been; it becomes a pending intake example (question and this answer) for the next training.",
    )
