"""`create_app(settings)`: the FastAPI application; its lifespan starts loading models and drains on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.engine.serving import RerankService
from rerank_runtime.repository import ModelRepository
from rerank_runtime.server.auth import ApiKeyGuard, KeyStore
from rerank_runtime.server.dependencies import require_api_key
from rerank_runtime.server.errors import install_error_handlers
from rerank_runtime.server.middleware import RequestBodyGuard, RequestMetrics
from rerank_runtime.server.routes import health, rerank
from rerank_runtime.server.settings import Settings

_TITLE = "rerank-runtime"
_DESCRIPTION = "Cohere-compatible rerank API for cross-encoders on OpenVINO"
_VERSION = "0.1.0"
_ASSETS = "/docs/assets"


def create_app(settings: Settings) -> FastAPI:
    """Build the server; models load in the background after start-up and readiness waits for them."""
    metrics = RuntimeMetrics()
    service = RerankService(
        ModelRepository(settings.repository),
        settings.engine_options(),
        names=settings.models,
        poll_interval=settings.poll_interval,
        tokenizer_threads=settings.tokenizer_threads,
        max_inflight_requests=settings.max_inflight_requests,
        inline_tokenize_chars=settings.inline_tokenize_chars,
        metrics=metrics,
    )
    keys = KeyStore(
        settings.api_key.get_secret_value() if settings.api_key is not None else None,
        settings.api_key_file,
        settings.api_key_reload_interval,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.shutdown(settings.drain_timeout)

    app = FastAPI(
        title=_TITLE,
        description=_DESCRIPTION,
        version=_VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.keys = keys
    install_error_handlers(app)
    routers = (rerank.router, health.router)
    for router in routers:
        app.include_router(router)
    _install_docs(app)
    protected = frozenset(
        route.path
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and any(d.dependency is require_api_key for d in route.dependencies)
    )
    app.openapi = lambda: _openapi(app, settings, service, keys.enabled)  # type: ignore[method-assign]
    # Last added runs first: metrics see every response; the key is checked before any body is read.
    app.add_middleware(RequestBodyGuard, limit=settings.max_request_bytes, timeout=settings.body_timeout)
    app.add_middleware(ApiKeyGuard, keys=keys, protected=protected.__contains__)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the assets of the swagger-ui-bundle package: works without internet."""
    app.mount(_ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{_TITLE} API",
            swagger_js_url=f"{root}{_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_ASSETS}/favicon-32x32.png",
        )


def _openapi(app: FastAPI, settings: Settings, service: RerankService, keys_enabled: bool) -> dict[str, Any]:
    """The OpenAPI document with this server's limits, served model names and authentication."""
    schema = get_openapi(title=_TITLE, version=_VERSION, description=_DESCRIPTION, routes=app.routes)
    request = schema["components"]["schemas"]["RerankRequest"]
    for field in ("documents", "texts"):
        request["properties"][field]["maxItems"] = settings.max_documents
    names = sorted(service.models) or list(settings.models)
    example: dict[str, Any] = {"query": "how do I reset my password", "documents": ["Open Settings", "Hello"]}
    if names:
        example = {"model": names[0], **example}
    request["examples"] = [example]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if not keys_enabled:
                operation.pop("security", None)
            if names and path.startswith("/v2/models/{name}"):
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "name":
                        parameter["example"] = names[0]
    if not keys_enabled:
        schema["components"].pop("securitySchemes", None)
    return schema
