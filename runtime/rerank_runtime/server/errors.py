"""The one place that turns errors into HTTP responses, in Cohere's shape `{"id", "message"}`.

400 invalid request (including text that is not valid Unicode) or malformed JSON, 401 missing/bad API key,
404 unknown model or route, 405 wrong method, 408 request body not received in time, 413 too large, 422 wrong
schema, 429 over the waiting-time budget or queue full and 503 not ready, shutting down or deadline passed
in the queue (both with Retry-After). Bad input never produces a 5xx.

On `/rerank` (the path TEI clients call) every error also carries TEI's `{"error", "error_type"}`, whatever
the body looked like, so both client families find their fields.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from rerank_runtime.engine.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RerankError,
)

logger = logging.getLogger(__name__)

TEI_PATH = "/rerank"

# TEI's error types (its `ErrorType`), by status.
_TEI_ERROR_TYPES = {
    401: "Unauthorized",
    429: "Overloaded",
    499: "Empty",
    503: "Unhealthy",
}

# Status of a request whose client went away before the answer (nginx's convention); nobody reads it,
# but it keeps metrics honest.
CLIENT_CLOSED = 499


class ClientDisconnectedError(Exception):
    """The client closed the connection while its request was being served."""


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    """The error body for a request on `path`."""
    # Messages never carry raw request text, but a lone surrogate must not turn an error into a 500.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body: dict[str, Any] = {"id": uuid.uuid4().hex, "message": message}
    if path == TEI_PATH:
        body["error"] = message
        body["error_type"] = _TEI_ERROR_TYPES.get(status, "Backend" if status >= 500 else "Validation")
    return body


def error_response(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error response for `request`."""
    return JSONResponse(error_body(request.url.path, status, message), status_code=status, headers=headers)


async def send_error(
    scope: Scope, send: Send, status: int, message: str, headers: Mapping[str, str] | None = None
) -> None:
    """Send an error response from ASGI middleware (before or instead of the application)."""
    payload = json.dumps(error_body(scope["path"], status, message)).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait of `seconds` (whole seconds, at least one)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _location(error: Any) -> str:
    return ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"


def _describe_validation(exc: RequestValidationError) -> tuple[int, str]:
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return 400, "request body is not valid JSON"
    if any(error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",) for error in errors):
        return 400, "request body is missing; send a JSON object"
    for error in errors:
        if error.get("type") == "string_unicode":
            # A pattern-checked field holding a lone surrogate: the same 400 as any other invalid text.
            return 400, f"{_location(error)} is not valid Unicode: it contains a lone surrogate; send UTF-8"
    parts = [f"{_location(error)}: {error.get('msg', 'invalid')}" for error in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping from every error type to its HTTP response."""

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _describe_validation(exc)
        return error_response(request, status, message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(ClientDisconnectedError)
    async def on_disconnect(request: Request, exc: ClientDisconnectedError) -> JSONResponse:
        return error_response(request, CLIENT_CLOSED, "client closed the connection")

    @app.exception_handler(RerankError)
    async def on_domain(request: Request, exc: RerankError) -> JSONResponse:
        if isinstance(exc, InvalidRequestError):
            return error_response(request, 400, str(exc))
        if isinstance(exc, PayloadTooLargeError):
            return error_response(request, 413, str(exc))
        if isinstance(exc, ModelNotFoundError):
            return error_response(request, 404, str(exc))
        if isinstance(exc, OverloadedError | DeadlineExceededError):
            return error_response(request, 429, str(exc), retry_after(exc.retry_after))
        if isinstance(exc, ModelNotReadyError):
            return error_response(request, 503, str(exc), retry_after(exc.retry_after))
        logger.error("unexpected engine error: %s", exc)
        return error_response(request, 503, f"model unavailable: {exc}", retry_after(1))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal error")
