"""The one place that turns errors into HTTP responses: `{"id", "message"}` with the documented status codes.

400 invalid request or malformed JSON, 401 missing/bad API key, 404 unknown model or route, 413 too large,
422 wrong schema, 429 queue full and 503 not ready or shutting down (both with Retry-After). Bad input never
produces a 500.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerank_runtime.engine.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RerankError,
)

logger = logging.getLogger(__name__)

# TEI clients expect `error_type` next to the message.
_TEI_ERROR_TYPES = {
    400: "Validation",
    413: "Validation",
    422: "Validation",
    429: "Overloaded",
    503: "Unhealthy",
}


class UnauthorizedError(Exception):
    """The API key is missing or wrong."""


def error_response(
    request: Request | None, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error body in Cohere's shape (plus TEI's fields when the request was TEI-shaped)."""
    body: dict[str, Any] = {"id": uuid.uuid4().hex, "message": message}
    if request is not None and getattr(request.state, "tei", False):
        body["error"] = message
        body["error_type"] = _TEI_ERROR_TYPES.get(status, "Backend")
    return JSONResponse(body, status_code=status, headers=headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _describe_validation(exc: RequestValidationError) -> tuple[int, str]:
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return 400, "request body is not valid JSON"
    if any(error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",) for error in errors):
        return 400, "request body is missing; send a JSON object"
    parts = []
    for error in errors[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
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

    @app.exception_handler(UnauthorizedError)
    async def on_unauthorized(request: Request, exc: UnauthorizedError) -> JSONResponse:
        return error_response(request, 401, str(exc), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RerankError)
    async def on_domain(request: Request, exc: RerankError) -> JSONResponse:
        if isinstance(exc, InvalidRequestError):
            return error_response(request, 400, str(exc))
        if isinstance(exc, PayloadTooLargeError):
            return error_response(request, 413, str(exc))
        if isinstance(exc, ModelNotFoundError):
            return error_response(request, 404, str(exc))
        if isinstance(exc, OverloadedError):
            return error_response(request, 429, str(exc), _retry_after(exc.retry_after))
        if isinstance(exc, ModelNotReadyError):
            return error_response(request, 503, str(exc), _retry_after(exc.retry_after))
        logger.error("unexpected engine error: %s", exc)
        return error_response(request, 503, f"model unavailable: {exc}", _retry_after(1))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal error")
