"""Request dependencies: the services routers take from app state, and the API key check."""

from __future__ import annotations

import hmac

from fastapi import Request

from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.engine.serving import RerankService
from rerank_runtime.server.errors import UnauthorizedError
from rerank_runtime.server.settings import Settings


def get_service(request: Request) -> RerankService:
    """The app's rerank service."""
    service: RerankService = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> RuntimeMetrics:
    """The app's metrics registry."""
    metrics: RuntimeMetrics = request.app.state.metrics
    return metrics


def require_api_key(request: Request) -> None:
    """Accept the request when no key is configured or it carries `Authorization: Bearer <key>`."""
    expected = get_settings(request).api_key
    if expected is None:
        return
    header = request.headers.get("authorization")
    if not header:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    ):
        raise UnauthorizedError("invalid API key")
