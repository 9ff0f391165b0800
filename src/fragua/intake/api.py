"""The intake HTTP API (FastAPI): add examples, read the queue, start a training.

``fragua serve-api`` runs it with uvicorn. Every route but ``/health`` and the docs needs
``Authorization: Bearer <intake.api_token>``, checked before the body is read; request bodies
above ``intake.max_request_bytes`` get 413; bad bodies get 422 naming the field (``loc``, ``msg``,
``type``; the rejected value is not echoed back). Bodies are read strictly first
(``fragua.intake.jsonbody``): lone surrogates, NaN/Infinity, integers beyond 64 bits and
``meta`` nested deeper than ``intake.max_meta_depth`` are 422s, never 500s.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any, Callable, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import OperationalError

from fragua import __version__
from fragua.intake.jsonbody import INT64_MAX, check_json_body, printable
from fragua.intake.queue import KEY_MAX, IdempotencyConflict, IntakeError, IntakeQueue, RowError, messages_record, question_answer_record
from fragua.registry import open_registry
from fragua.settings import Settings

HARD_TEXT_LIMIT = 1_000_000


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(min_length=1, max_length=HARD_TEXT_LIMIT)


class ExampleIn(BaseModel):
    """A question and its answer, or a whole conversation ending in the assistant's answer."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"question": "What time is check-out?", "answer": "Check-out is at 11:00.", "domain": "hotel",
                                         "idempotency_key": "crm-ticket-4711"}]},
    )

    question: str | None = Field(None, min_length=1, max_length=HARD_TEXT_LIMIT, description="The user's question.")
    answer: str | None = Field(None, min_length=1, max_length=HARD_TEXT_LIMIT, description="The answer the model should learn.")
    system: str | None = Field(None, min_length=1, max_length=HARD_TEXT_LIMIT, description="Optional system prompt before the question.")
    messages: list[MessageIn] | None = Field(None, min_length=2, max_length=200, description="Instead of question/answer: a conversation whose last message is the assistant's answer.")
    domain: str | None = Field(None, min_length=1, max_length=100, description="Domain of the example; None lets ingest route it.")
    meta: dict[str, Any] = Field(
        default_factory=dict,
        description="Anything else to keep with the example (lands in the record's meta): standard JSON, numbers within 64 bits, nested at most intake.max_meta_depth levels.",
    )
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=KEY_MAX,
        description="Client-chosen key: posting the same key again returns the stored example instead of adding another. Default: a fresh key per request.",
    )

    @model_validator(mode="after")
    def _shape(self) -> ExampleIn:
        if self.messages is not None:
            if self.question is not None or self.answer is not None or self.system is not None:
                raise ValueError("give either question/answer (and system) or messages, not both")
        elif self.question is None or self.answer is None:
            raise ValueError("question and answer are required (or give messages)")
        return self


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    examples: list[ExampleIn] = Field(min_length=1, description="Examples to add; all or none are stored.")


class ExampleOut(BaseModel):
    id: int
    idempotency_key: str
    status: str
    created: bool = Field(description="False when the key was already stored (a retry): nothing new was added.")


class BatchOut(BaseModel):
    created: int
    existing: int
    examples: list[ExampleOut]


class PendingOut(BaseModel):
    count: int = Field(description="Examples pending in all.")
    examples: list[dict[str, Any]] = Field(description="This page, oldest first; ask again with after_id = the last id for the next.")


class StatsOut(BaseModel):
    production_version: str | None
    examples: dict[str, int] = Field(description="Examples per status: pending, training, trained, duplicate (already in production's dataset).")
    min_new_examples: int
    last_training: dict[str, Any] | None = Field(description="The last autotrain run that deployed a version.")
    last_run: dict[str, Any] | None = Field(description="The last autotrain run that was not skipped, with its state.")


class ForceOut(BaseModel):
    mode: Literal["deployment", "in-process"]
    detail: str
    flow_run_id: str | None = None
    deployment: str | None = None


def _text_too_long(settings: Settings, example: ExampleIn, prefix: list[Any]) -> list[dict[str, Any]]:
    limit = settings.intake.max_example_chars
    fields = [("question", example.question), ("answer", example.answer), ("system", example.system)]
    fields += [(("messages", i, "content"), m.content) for i, m in enumerate(example.messages or [])]
    errors = []
    for loc, value in fields:
        if value is not None and len(value) > limit:
            path = list(loc) if isinstance(loc, tuple) else [loc]
            errors.append({"loc": [*prefix, *path], "msg": f"longer than intake.max_example_chars ({limit} characters)", "type": "string_too_long"})
    return errors


def _record(settings: Settings, example: ExampleIn, prefix: list[Any]) -> dict[str, Any]:
    errors = _text_too_long(settings, example, prefix)
    if errors:
        raise HTTPException(422, detail=errors)
    try:
        if example.messages is not None:
            return messages_record([m.model_dump() for m in example.messages], domain=example.domain, meta=example.meta)
        return question_answer_record(example.question or "", example.answer or "", system=example.system, domain=example.domain, meta=example.meta)
    except RowError as exc:
        field = "messages" if example.messages is not None else "answer"
        raise HTTPException(422, detail=[{"loc": [*prefix, field], "msg": str(exc), "type": exc.kind}]) from exc


def _intake_too_large(max_bytes: int) -> Response:
    return JSONResponse(
        {"detail": f"request body larger than intake.max_request_bytes ({max_bytes} bytes); split it into smaller batches"},
        status_code=413,
    )


class BodySizeLimit:
    """Answers 413 to bodies over the limit, by Content-Length or, when streamed, by counting;
    ``too_large(max_bytes)`` is the answer (by default the intake API's)."""

    def __init__(self, app: Any, max_bytes: int, too_large: Callable[[int], Response] = _intake_too_large) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.too_large = too_large

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed() -> dict[str, Any]:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _reject(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.too_large(self.max_bytes)(scope, receive, send)


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 details without the rejected input: echoing it could fail to encode (a lone
    surrogate, NaN) and would send megabytes of text back."""
    return [
        {"loc": [printable(p) if isinstance(p, str) else p for p in error["loc"]], "msg": printable(str(error["msg"])), "type": str(error["type"])}
        for error in errors
    ]


def guarded_route(authenticate: Callable[[Request], Any], max_meta_depth: int) -> type[APIRoute]:
    """A route class that checks the token, then the body's JSON, before FastAPI reads the body:
    without the token a client learns nothing about its body, and what FastAPI and the queue
    read is JSON they can store."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            handle = super().get_route_handler()
            takes_body = self.body_field is not None

            async def guarded(request: Request) -> Response:
                await authenticate(request)
                if takes_body:
                    body = await request.body()
                    if body and (problems := check_json_body(body, max_meta_depth=max_meta_depth)):
                        raise RequestValidationError(problems)
                return await handle(request)

            return guarded

    return GuardedRoute


AutotrainRunner = Callable[[Settings], Any]


class ForcedRuns:
    """At most one in-process forced training at a time, on a background thread. ``run`` is the
    autotrain flow itself (``fragua serve-api`` passes it in: the API does not import flows)."""

    def __init__(self, run: AutotrainRunner) -> None:
        self._run_autotrain = run
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self, settings: Settings) -> bool:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._thread = threading.Thread(target=self._run, args=(settings,), name="fragua-forced-training", daemon=True)
            self._thread.start()
            return True

    def _run(self, settings: Settings) -> None:
        try:
            self._run_autotrain(settings)
            self.last_error = None
        except Exception as exc:  # the run's state and the queue record the failure; keep the server up
            self.last_error = f"{type(exc).__name__}: {exc}"

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def prefect_server_configured() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def start_deployment(name: str) -> str:
    """Schedule a run of the deployment now; returns the flow run id."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name, parameters={"force": True}, timeout=0)
    return str(flow_run.id)


def create_app(settings: Settings, run_autotrain: AutotrainRunner) -> FastAPI:
    """The API over ``settings``' intake queue; ``run_autotrain(settings)`` trains on what is pending,
    however few, when a training is forced and no Prefect server is configured."""
    if settings.intake.api_token is None or not settings.intake.api_token.get_secret_value().strip():
        raise IntakeError(
            "intake.api_token is not set: the API needs a bearer token. Set FRAGUA_INTAKE__API_TOKEN "
            "(e.g. to the output of `openssl rand -hex 32`) and give clients the same value."
        )
    token = settings.intake.api_token.get_secret_value().encode()
    queue = IntakeQueue.from_settings(settings)
    forced = ForcedRuns(run_autotrain)
    bearer = HTTPBearer(auto_error=False, description="intake.api_token")

    async def authenticate(request: Request) -> None:
        credentials: HTTPAuthorizationCredentials | None = await bearer(request)
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, detail="missing or wrong bearer token (Authorization: Bearer <intake.api_token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="Fragua intake API",
        version=__version__,
        description="Add question/answer examples to the intake queue; autotrain fine-tunes on them once enough are pending.",
    )
    app.state.queue = queue
    app.state.forced_runs = forced
    app.add_middleware(BodySizeLimit, max_bytes=settings.intake.max_request_bytes)
    # The route class enforces the token; the dependency only puts the scheme in the OpenAPI document.
    guarded = APIRouter(route_class=guarded_route(authenticate, settings.intake.max_meta_depth), dependencies=[Depends(bearer)])

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(_request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, _exc: OperationalError) -> JSONResponse:
        # The queue's database went away mid-request (a restart, a failover): nothing was stored
        # (the transaction rolled back), so the client may safely retry the same request.
        return JSONResponse({"detail": "the intake queue's database is unavailable; nothing was stored, retry later"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})

    @app.exception_handler(IntakeError)
    async def _bad_input(_request: Request, exc: IntakeError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body", "idempotency_key"], "msg": str(exc), "type": "value_error"}]}, status_code=422)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness and queue reachability; needs no token."""
        return {"status": "ok", "version": __version__, "queue": queue.counts()}

    @guarded.post("/examples", response_model=ExampleOut, status_code=status.HTTP_201_CREATED, tags=["examples"],
                  responses={200: {"description": "A retry: the key is already stored, nothing was added."}, 409: {"description": "The key is stored with different content."}})
    def add_example(example: ExampleIn, response: Response,
                    idempotency_key: str | None = Header(None, max_length=KEY_MAX, description="Alternative to the body's idempotency_key.")) -> ExampleOut:
        """Add one example; retries with the same idempotency key are safe."""
        if idempotency_key is not None and example.idempotency_key is not None and idempotency_key != example.idempotency_key:
            raise HTTPException(422, detail=[{"loc": ["header", "idempotency-key"], "msg": "differs from the body's idempotency_key", "type": "value_error"}])
        added = queue.add(_record(settings, example, ["body"]), key=example.idempotency_key or idempotency_key, origin="api")
        if not added.created:
            response.status_code = status.HTTP_200_OK
        return ExampleOut(id=added.example.id, idempotency_key=added.example.idempotency_key, status=added.example.status, created=added.created)

    @guarded.post("/examples/batch", response_model=BatchOut, status_code=status.HTTP_201_CREATED, tags=["examples"],
                  responses={200: {"description": "A retry: every key was already stored, nothing was added."}, 409: {"description": "A key is stored with different content; nothing was added."}})
    def add_batch(batch: BatchIn, response: Response) -> BatchOut:
        """Add up to intake.max_batch_examples examples in one transaction (all or none)."""
        if len(batch.examples) > settings.intake.max_batch_examples:
            raise HTTPException(422, detail=[{"loc": ["body", "examples"], "msg": f"at most intake.max_batch_examples ({settings.intake.max_batch_examples}) per batch, got {len(batch.examples)}", "type": "too_long"}])
        items = [(_record(settings, e, ["body", "examples", i]), e.idempotency_key) for i, e in enumerate(batch.examples)]
        added = queue.add_many(items, origin="api")
        out = [ExampleOut(id=a.example.id, idempotency_key=a.example.idempotency_key, status=a.example.status, created=a.created) for a in added]
        created = sum(a.created for a in added)
        if not created:
            response.status_code = status.HTTP_200_OK
        return BatchOut(created=created, existing=len(added) - created, examples=out)

    @guarded.get("/examples/pending", response_model=PendingOut, tags=["examples"])
    def pending(limit: int = Query(100, ge=1, le=1000), after_id: int = Query(0, ge=0, le=INT64_MAX)) -> PendingOut:
        """Pending examples, oldest first, a page at a time."""
        return PendingOut(count=queue.counts()["pending"], examples=[e.as_json() for e in queue.examples("pending", limit=limit, after_id=after_id)])

    @guarded.get("/stats", response_model=StatsOut, tags=["service"])
    def stats() -> StatsOut:
        """Production version, examples per status, the last training and the last run's state."""
        production = open_registry(settings).production()
        last_training, last_run = queue.last_run(trained=True), queue.last_run()
        return StatsOut(
            production_version=production.version if production else None,
            examples=queue.counts(),
            min_new_examples=settings.intake.min_new_examples,
            last_training=last_training.__dict__ if last_training else None,
            last_run=last_run.__dict__ if last_run else None,
        )

    @guarded.post("/training/force", response_model=ForceOut, status_code=status.HTTP_202_ACCEPTED, tags=["training"],
                  responses={409: {"description": "An in-process forced training is already running."}})
    def force_training() -> ForceOut:
        """Train on whatever is pending now, however few: through the Prefect deployment when a server is configured, else in this process."""
        if prefect_server_configured():
            name = settings.intake.force_deployment
            try:
                flow_run_id = start_deployment(name)
            except Exception as exc:
                raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"could not start deployment {name!r}: {exc}") from exc
            return ForceOut(mode="deployment", deployment=name, flow_run_id=flow_run_id, detail=f"flow run of {name} scheduled")
        if not forced.start(settings):
            raise HTTPException(status.HTTP_409_CONFLICT, detail="a forced training is already running in this server")
        return ForceOut(mode="in-process", detail="autotrain started in the API process; follow it with GET /stats")

    app.include_router(guarded)
    return app
