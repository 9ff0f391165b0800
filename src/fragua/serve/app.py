"""The OpenAI-compatible HTTP application of `fragua serve` (FastAPI).

``/v1/chat/completions``, ``/v1/completions`` (both streamed on request), ``/v1/models``,
``/v1/feedback`` and ``/admin/reload`` need ``Authorization: Bearer <serve.api_key>`` when a key
is set, checked before the body is read; bodies above serve.max_body_bytes get 413 and are read
strictly (bad Unicode, NaN, huge integers, deep nesting are 400s naming the field). ``/health``,
``/ready`` and ``/metrics`` are open, for probes and Prometheus. Every answer names the version
that produced it, in ``model`` and in the ``X-Fragua-Version`` header.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from fragua import __version__
from fragua.intake.api import BodySizeLimit, guarded_route
from fragua.intake.queue import QueueUnavailable
from fragua.intake.serving_log import FeedbackConflict, InvalidFeedback, ServingLog, UnknownResponse
from fragua.registry.versions import Registry, RegistryError
from fragua.serve import answers
from fragua.serve.engine import Engine, ModelUnavailable, Prompt
from fragua.serve.errors import ApiError, error_body, install_error_handlers
from fragua.serve.feedback import RecentResponses, question_of
from fragua.serve.metrics import ServeMetrics
from fragua.serve.routing import Router, UnknownModel
from fragua.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest, GenerationRequest
from fragua.settings import Settings
from fragua.storage.store import StoreError

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/models": "models", "/v1/feedback": "feedback", "/admin/reload": "reload"}
# Bodies hold no ``meta``; the strict reader's own structure limit bounds their nesting.
NO_META = 0


def _epoch(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp())


def create_app(settings: Settings, engine: Engine, registry: Registry, *, token: str | None, serving_log: ServingLog) -> FastAPI:
    """The server over ``engine`` following ``registry``'s aliases; ``token`` (None: no
    authentication) is what clients send as their API key; ``serving_log`` keeps what was served
    and the feedback."""
    serve = settings.serve
    router = Router(registry, engine, default_model=serve.default_model, load_failed=lambda version: metrics.load_failures.labels(version).inc())
    metrics = ServeMetrics(engine.stats, lambda: router.routes)
    recent = RecentResponses(serve.recent_responses)
    answering = answers.Answers(engine, metrics, recent, serving_log)
    expected = token.encode() if token is not None else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(router.watch(serve.watch_interval_s), name="fragua-alias-watcher")
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await engine.close()

    async def authenticate(request: Request) -> None:
        if expected is None:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), expected):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <serve.api_key>", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def too_large(max_bytes: int) -> Response:
        return JSONResponse(error_body(413, f"request body larger than serve.max_body_bytes ({max_bytes} bytes)", code="request_too_large"), status_code=413)

    app = FastAPI(title="Fragua OpenAI-compatible server", version=__version__, lifespan=lifespan,
                  description="Chat and text completions by the registry's versions; `model` is an alias (production, canary, ...) or a version.")
    app.state.router = router
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimit, max_bytes=serve.max_body_bytes, too_large=too_large)
    install_error_handlers(app, lambda path, status, code, version: metrics.failed(version, ENDPOINTS.get(path, "other"), status, code))
    guarded = APIRouter(route_class=guarded_route(authenticate, NO_META))

    async def generate(endpoint: answers.Endpoint, body: GenerationRequest, prompt: Prompt) -> Response:
        started = time.monotonic()
        params = body.sampling(serve)
        requested = body.model or serve.default_model
        try:
            route = await router.resolve(body.model, body.user)
        except UnknownModel as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from exc
        except ModelUnavailable as exc:
            raise ApiError(503, str(exc), param="model", code="model_unavailable") from exc
        request = answers.Request(endpoint, route, requested, prompt, params, body.user, body.include_usage, started)
        return await answering.respond(request, body.stream)

    @guarded.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatRequest) -> Response:
        """A chat answer by the version ``model`` names; ``stream: true`` sends it as server-sent events."""
        return await generate("chat", body, body.prompt())

    @guarded.post("/v1/completions", tags=["openai"])
    async def completions(body: CompletionRequest) -> Response:
        """The continuation of a text by the version ``model`` names; streamed on request."""
        return await generate("completion", body, body.text_prompt())

    @guarded.get("/v1/models", tags=["openai"])
    async def models() -> dict[str, Any]:
        """Aliases (``root`` is the version they route to) and published versions."""
        try:
            manifests = await router.published()
        except (RegistryError, StoreError) as exc:
            raise ApiError(503, f"cannot read the registry: {exc}", code="registry_unavailable") from exc
        data = [
            {"id": alias, "object": "model", "created": _epoch(router.aliases[alias].updated_at) if alias in router.aliases else 0,
             "owned_by": "fragua", "root": version}
            for alias, version in sorted(router.routes.items())
        ]
        data += [{"id": m.version, "object": "model", "created": _epoch(m.created_at), "owned_by": "fragua", "root": m.version} for m in manifests]
        return {"object": "list", "data": data}

    @guarded.post("/v1/feedback", tags=["feedback"])
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        """Rate an answer by its response id; a correction becomes a pending intake example."""
        served = recent.get(body.response_id)
        question = question_of(served) if served is not None else None
        try:
            rated = await asyncio.to_thread(serving_log.feedback, body.response_id, body.rating, body.correction, question)
        except UnknownResponse as exc:
            raise ApiError(404, str(exc), param="response_id", code="response_not_found") from exc
        except FeedbackConflict as exc:
            raise ApiError(409, str(exc), param="response_id", code="feedback_conflict") from exc
        except InvalidFeedback as exc:
            raise ApiError(400, str(exc), param="correction" if body.correction is not None else "rating") from exc
        except QueueUnavailable as exc:
            raise ApiError(503, f"the serving log's database cannot be reached: {exc}", code="database_unavailable") from exc
        version = rated.version
        metrics.rated(version, body.rating, body.correction is not None)
        return {"response_id": body.response_id, "version": version, "rating": body.rating, "correction": body.correction is not None}

    @guarded.post("/admin/reload", tags=["admin"])
    async def reload() -> dict[str, Any]:
        """Read the aliases now (a deploy calls this); versions that failed to load are tried again.
        ``routes`` is what requests get; ``pending`` the moves waiting for a version to load."""
        try:
            await router.refresh(retry_failed=True)
        except (RegistryError, StoreError) as exc:
            raise ApiError(503, f"cannot read the registry's aliases: {exc}", code="registry_unavailable") from exc
        return router.describe()

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/ready", tags=["service"], responses={503: {"description": "The default model is not loaded yet."}})
    def ready() -> JSONResponse:
        """200 once the default model's version is loaded, else 503."""
        state = router.describe()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @app.get("/metrics", tags=["service"])
    def prometheus() -> Response:
        """Prometheus metrics per version."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(guarded)
    return app
