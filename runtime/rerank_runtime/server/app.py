"""`create_app(settings)`: the FastAPI application; its lifespan starts loading models and drains on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.engine.serving import RerankService
from rerank_runtime.repository import ModelRepository
from rerank_runtime.server.errors import install_error_handlers
from rerank_runtime.server.middleware import BodySizeLimit, RequestMetrics
from rerank_runtime.server.routes import health, rerank
from rerank_runtime.server.settings import Settings


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
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.shutdown(settings.drain_timeout)

    app = FastAPI(
        title="rerank-runtime",
        description="Cohere-compatible rerank API for cross-encoders on OpenVINO",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(rerank.router)
    app.include_router(health.router)
    # Outermost first: metrics see every response, including 413s from the size limit.
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
