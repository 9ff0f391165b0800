"""Where the judge runs: a local model with Fragua's own generation, or an OpenAI-compatible
endpoint (a hosted API, a vLLM server, `fragua serve`) over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from pydantic import SecretStr

from fragua.data.records import Message
from fragua.inference.generation import FALLBACK_MAX_LENGTH, generate_answers
from fragua.integrations.prefect_blocks import load_block
from fragua.models.loading import LoadedModel
from fragua.validate.judge import ChatMessage, JudgeError

ERROR_BODY_CHARS = 200


def secret_block_value(name: str) -> SecretStr:
    """The API key in the Prefect Secret block ``name`` (validate.judge.api_key_block)."""
    block = load_block(
        f"secret/{name}", setting="validate.judge.api_key_block", kind="Secret",
        how_to_create=f"`Secret(value=...).save({name!r})` (prefect.blocks.system)", types_module="prefect.blocks.system", error=JudgeError,
    )
    value = block.get()
    if not isinstance(value, str) or not value:
        raise JudgeError(f"the Secret block {name!r} named by validate.judge.api_key_block holds no text key")
    return SecretStr(value)


class EndpointJudge:
    """Chat completions from an OpenAI-compatible API, temperature 0, ``concurrency`` requests at a time."""

    def __init__(self, endpoint: str, model: str, *, api_key: SecretStr | None, max_new_tokens: int, timeout_s: float, concurrency: int) -> None:
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.identity = f"endpoint:{endpoint.rstrip('/')}:{model}"
        self.label = f"{model!r} at {endpoint}"

    def _complete_one(self, client: httpx.Client, messages: list[ChatMessage]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_new_tokens}
        try:
            response = client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise JudgeError(
                f"judge endpoint {self.url} is unreachable ({type(exc).__name__}: {exc}); check validate.judge.endpoint "
                "and that the server is running"
            ) from exc
        if response.status_code != 200:
            hint = "; check the key in validate.judge.api_key_block" if response.status_code in (401, 403) else ""
            raise JudgeError(f"judge endpoint {self.url} answered HTTP {response.status_code}: {response.text[:ERROR_BODY_CHARS]!r}{hint}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge endpoint {self.url} answered without choices[0].message.content: {response.text[:ERROR_BODY_CHARS]!r}") from exc
        if not isinstance(content, str):
            raise JudgeError(f"judge endpoint {self.url} answered a non-text message content: {content!r}")
        return content

    def complete(self, prompts: Sequence[list[ChatMessage]]) -> list[str]:
        headers = {"Authorization": f"Bearer {self.api_key.get_secret_value()}"} if self.api_key else {}
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client, ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda messages: self._complete_one(client, messages), prompts))


class LocalJudge:
    """Greedy answers of a local model (a folder or a registry version's verified copy), loaded
    on the first prompt: a validation whose verdicts are all cached never loads it."""

    def __init__(self, load: Callable[[], LoadedModel], *, identity: str, label: str, max_new_tokens: int, batch_size: int) -> None:
        self._load = load
        self._loaded: LoadedModel | None = None
        self.identity = identity
        self.label = label
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def complete(self, prompts: Sequence[list[ChatMessage]]) -> list[str]:
        if not prompts:
            return []
        if self._loaded is None:
            self._loaded = self._load()
        model: Any = self._loaded.model
        max_length = int(getattr(model.config, "max_position_embeddings", None) or FALLBACK_MAX_LENGTH)
        if max_length <= self.max_new_tokens:
            raise JudgeError(f"validate.judge.max_new_tokens ({self.max_new_tokens}) must be below the judge's context ({max_length} tokens)")
        messages = [[Message(role=m["role"], content=m["content"]) for m in prompt] for prompt in prompts]  # type: ignore[arg-type]
        return generate_answers(model, self._loaded.tokenizer, messages, self.max_new_tokens, self.batch_size, max_length)
