"""Request dependencies: the services routers take from app state, and the API key declaration."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.engine.serving import RerankService
from rerank_runtime.server.settings import Settings

API_KEY_SCHEME = HTTPBearer(
    auto_error=False, scheme_name="apiKey", description="`Authorization: Bearer <key>` when a key is set"
)


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


def require_api_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(API_KEY_SCHEME)],
) -> None:
    """Marks a route as protected (and documents the key in OpenAPI).

    The key itself is checked by `ApiKeyGuard` middleware on exactly these routes, before the request body is
    read, so an unauthenticated client cannot make the server parse anything.
    """
