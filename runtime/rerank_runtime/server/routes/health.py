"""Health, readiness and model metadata (KServe v2 style paths), `/v1/models`, and `/metrics`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.engine.serving import RerankService
from rerank_runtime.server.dependencies import get_metrics, get_service, require_api_key
from rerank_runtime.server.schemas import (
    ErrorBody,
    ModelCard,
    ModelList,
    ModelMetadata,
    Readiness,
    VersionInfo,
)

router = APIRouter(tags=["health"])
_UNKNOWN_MODEL: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown model"}}
ServiceDep = Annotated[RerankService, Depends(get_service)]


@router.get("/v2/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    """The process is up and serving HTTP."""
    return {"live": True}


@router.get(
    "/v2/health/ready",
    summary="Readiness of the whole server",
    responses={
        503: {"model": Readiness, "description": "A model is not loaded yet, or shutting down"},
    },
    response_model=Readiness,
)
async def ready(service: ServiceDep) -> JSONResponse:
    """200 when every served model has a loaded, warmed version; 503 otherwise or while shutting down."""
    is_ready = service.is_ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get(
    "/v2/models/{name:path}/ready",
    summary="Readiness of one model (name URL-encoded)",
    response_class=Response,
    responses={
        200: {"description": "The model serves (empty body)", "content": {}},
        503: {"description": "Loading or shutting down (empty body)", "content": {}},
        **_UNKNOWN_MODEL,
    },
)
async def model_ready(name: str, service: ServiceDep) -> Response:
    """200 with an empty body when the model can serve; 503 while loading or shutting down; 404 if unknown."""
    return Response(status_code=200 if service.model_ready(name) else 503)


@router.get(
    "/v2/models/{name:path}", summary="Model metadata: versions and their states", responses=_UNKNOWN_MODEL
)
async def model_metadata(name: str, service: ServiceDep) -> ModelMetadata:
    """Served version, every version seen (AVAILABLE, LOADING, FAILED, UNLOADED), last load error."""
    model = service.get_model(name)
    current = model.current
    return ModelMetadata(
        name=model.name,
        served_version=model.served_version,
        versions=[
            VersionInfo(version=s.version, state=s.state.value, error=s.error)
            for s in sorted(model.statuses.values(), key=lambda s: s.version)
        ],
        last_load_error=model.last_load_error,
        max_length=current.manifest.max_length if current else None,
        weight_format=current.manifest.weight_format if current else None,
        source=current.manifest.source if current else None,
        inference_precision=current.runner.inference_precision if current else None,
    )


@router.get(
    "/v1/models",
    summary="Served models",
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorBody, "description": "Missing or invalid API key"}},
)
async def list_models(service: ServiceDep) -> ModelList:
    """Every served model with its serving version."""
    return ModelList(
        data=[
            ModelCard(id=name, version=model.served_version, ready=model.current is not None)
            for name, model in sorted(service.models.items())
        ]
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(registry: Annotated[RuntimeMetrics, Depends(get_metrics)]) -> Response:
    """Requests, latency, queue depth, batch sizes, served versions, load times and failures."""
    return Response(registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
