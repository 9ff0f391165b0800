"""Turning an engine's output into OpenAI responses: whole, or streamed as server-sent events.

Each answer is counted in the metrics under the version that produced it, kept in the recent
responses (for feedback) and handed to the serving log once complete. The engine refuses a
request (prompt too long, overload, a version it cannot load) before its first piece, so a
stream starts only once the first piece is there and a refusal is still a plain HTTP error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Literal

from fastapi.responses import JSONResponse, StreamingResponse

from fragua.serve.engine import Completion, Engine, EngineError, ModelUnavailable, Overloaded, Prompt, PromptTooLong, SamplingParams, TextDelta
from fragua.serve.errors import ApiError, error_body
from fragua.intake.serving_log import ServedResponse, ServingLog
from fragua.serve.feedback import RecentResponses
from fragua.serve.metrics import ServeMetrics
from fragua.serve.routing import Route

logger = logging.getLogger("fragua.serve")

Endpoint = Literal["chat", "completion"]
VERSION_HEADER = "X-Fragua-Version"
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer was complete


def engine_error(exc: EngineError, endpoint: Endpoint) -> ApiError:
    """The HTTP error a client gets for what the engine refused."""
    if isinstance(exc, PromptTooLong):
        return ApiError(400, str(exc), param="messages" if endpoint == "chat" else "prompt", code="context_length_exceeded")
    if isinstance(exc, Overloaded):
        return ApiError(429, str(exc), code="overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, ModelUnavailable):
        return ApiError(503, str(exc), param="model", code="model_unavailable")
    return ApiError(400, str(exc), code="invalid_request")


@dataclass
class Request:
    """One generation request, resolved to the version that answers it."""

    endpoint: Endpoint
    route: Route
    requested_model: str
    prompt: Prompt
    params: SamplingParams
    user: str | None
    include_usage: bool
    started: float  # time.monotonic() when the request arrived

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.endpoint == "chat" else "cmpl"
        self.response_id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())


def _usage(completion: Completion) -> dict[str, int]:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


class Answers:
    def __init__(self, engine: Engine, metrics: ServeMetrics, recent: RecentResponses, serving_log: ServingLog) -> None:
        self.engine = engine
        self.metrics = metrics
        self.recent = recent
        self.serving_log = serving_log

    async def respond(self, request: Request, stream: bool) -> JSONResponse | StreamingResponse:
        pieces = self.engine.generate(request.route.version, request.prompt, request.params)
        try:
            first = await anext(pieces)
        except EngineError as exc:
            await self._close(pieces)
            raise await self._failed(request, engine_error(exc, request.endpoint)) from exc
        headers = {VERSION_HEADER: request.route.version}
        if stream:
            return StreamingResponse(self._events(request, first, pieces), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        try:
            text = []
            item = first
            while not isinstance(item, Completion):
                text.append(item.text)
                item = await anext(pieces)
        except EngineError as exc:
            raise await self._failed(request, engine_error(exc, request.endpoint)) from exc
        finally:
            await self._close(pieces)
        completion = item
        await self._answered(request, completion)
        return JSONResponse(self._whole(request, completion), headers=headers)

    def _whole(self, request: Request, completion: Completion) -> dict[str, Any]:
        if request.endpoint == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": completion.text}, "finish_reason": completion.finish_reason, "logprobs": None}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": completion.text, "finish_reason": completion.finish_reason, "logprobs": None}
            kind = "text_completion"
        return {"id": request.response_id, "object": kind, "created": request.created, "model": request.route.version,
                "choices": [choice], "usage": _usage(completion)}

    def _chunk(self, request: Request, text: str | None, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
        if request.endpoint == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
            kind = "text_completion"
        chunk = {"id": request.response_id, "object": kind, "created": request.created, "model": request.route.version, "choices": [choice]}
        if request.include_usage:
            chunk["usage"] = None
        return chunk

    async def _events(self, request: Request, first: TextDelta | Completion, pieces: AsyncIterator[TextDelta | Completion]) -> AsyncIterator[str]:
        settled = False  # answered or failed; otherwise the client left mid-answer
        try:
            if request.endpoint == "chat":
                yield _event(self._chunk(request, None, None, role=True))
            item = first
            while not isinstance(item, Completion):
                if item.text:
                    yield _event(self._chunk(request, item.text, None))
                item = await anext(pieces)
            yield _event(self._chunk(request, None, item.finish_reason))
            if request.include_usage:
                last = self._chunk(request, None, None)
                last["choices"], last["usage"] = [], _usage(item)
                yield _event(last)
            settled = True
            await self._answered(request, item)  # before [DONE]: feedback sent on seeing it finds the answer
            yield "data: [DONE]\n\n"
        except EngineError as exc:
            # Headers are sent: the failure travels as an error event, which OpenAI's clients raise.
            settled = True
            error = await self._failed(request, engine_error(exc, request.endpoint))
            self.metrics.failed(request.route.version, request.endpoint, error.status, error.code)
            yield _event(error_body(error.status, error.message, error.param, error.code))
        finally:
            await self._close(pieces)
            if not settled:
                self.metrics.failed(request.route.version, request.endpoint, CLIENT_CLOSED, "client_closed")

    @staticmethod
    async def _close(pieces: AsyncIterator[Any]) -> None:
        """Tell the engine the answer is no longer wanted (a finished one is already closed)."""
        close = getattr(pieces, "aclose", None)
        if close is not None:
            await close()

    async def _answered(self, request: Request, completion: Completion) -> None:
        latency = time.monotonic() - request.started
        self.metrics.answered(request.route.version, request.endpoint, 200, latency, completion.prompt_tokens, completion.completion_tokens)
        served = self._served(request, latency, completion=completion)
        self.recent.add(served)
        await self._log(served)

    async def _failed(self, request: Request, error: ApiError) -> ApiError:
        """``error``, logged and marked with the version (the error handler counts it in /metrics)."""
        latency = time.monotonic() - request.started
        error.version = request.route.version
        await self._log(self._served(request, latency, error=error))
        return error

    def _served(self, request: Request, latency_s: float, *, completion: Completion | None = None, error: ApiError | None = None) -> ServedResponse:
        prompt = request.prompt
        messages = [m.model_dump() for m in prompt.messages] if prompt.messages is not None else [{"role": "user", "content": prompt.text or ""}]
        return ServedResponse(
            response_id=request.response_id, version=request.route.version, requested_model=request.requested_model, user=request.user,
            created_at=datetime.fromtimestamp(request.created, timezone.utc), latency_ms=latency_s * 1000,
            prompt_tokens=completion.prompt_tokens if completion else 0, completion_tokens=completion.completion_tokens if completion else 0,
            ok=error is None, error_type=error.code if error else None, messages=messages, answer=completion.text if completion else None,
        )

    async def _log(self, served: ServedResponse) -> None:
        try:
            await asyncio.to_thread(self.serving_log.record, served)
        except Exception as exc:  # the answer was given; a log that cannot keep it must not turn it into an error
            logger.warning("could not record %s in the serving log: %s", served.response_id, exc)


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
