"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the status an
OpenAI client expects (400 bad request, 401 auth, 404 unknown model, 413 too large, 429 overload,
503 not ready), so its retry and error classes work unchanged."""

from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fragua.intake.jsonbody import printable

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """A request the server answers with an OpenAI-style error."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.version: str | None = None  # the version the request was routed to, once known (for /metrics)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": printable(message), "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.message, error.param, error.code), status_code=error.status, headers=error.headers)


# What pydantic puts in a location besides field names: the member of a union that failed
# (``str``, ``list[TextPart]``, ``function-after[...]``); OpenAI's parameter names are snake_case.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _is_field(part: Any) -> bool:
    return isinstance(part, int) or (part not in _TYPE_TAGS and not any(c in part for c in "[(-") and not part[:1].isupper())


def _param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``["body", "messages", 0, "content"]`` -> ``messages[0].content``."""
    parts = [p for p in loc if p != "body" and _is_field(p)]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return printable(text) or None


# Told of every error answered: (path, status, code, version or None).
ErrorCounter = Callable[[str, int, "str | None", "str | None"], Any]


def install_error_handlers(app: FastAPI, count: ErrorCounter) -> None:
    """Validation problems become 400s naming the parameter (the rejected value is not echoed back:
    it could be megabytes, or text that cannot be encoded); HTTP errors keep their status."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        count(request.url.path, exc.status, exc.code, exc.version)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # the deepest problem: of a union's alternatives, the one the value came closest to
        first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {"loc": ("body",), "msg": "invalid request"}
        param = _param(first.get("loc", ()))
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problems)"
        code = str(first.get("type", "invalid_value"))
        count(request.url.path, 400, code, None)
        return JSONResponse(error_body(400, message, param, code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        count(request.url.path, exc.status_code, code, None)
        return JSONResponse(error_body(exc.status_code, str(exc.detail), None, code), status_code=exc.status_code, headers=getattr(exc, "headers", None))
