"""Rerank routes: Cohere v1/v2, OVMS `/v3/...` paths, and `/rerank` (Cohere container path, TEI shape)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rerank_runtime.engine.serving import RerankOutcome, RerankService
from rerank_runtime.server.dependencies import get_service, get_settings, require_api_key
from rerank_runtime.server.schemas import (
    DocumentItem,
    ErrorBody,
    RerankRequest,
    RerankResponse,
    TeiRank,
    to_query,
)
from rerank_runtime.server.settings import Settings

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["rerank"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Invalid request",
        401: "Missing or invalid API key",
        404: "Unknown model",
        413: "Request too large",
        422: "Request does not match the schema",
        429: "Queue full; retry after Retry-After seconds",
        503: "Model not ready or server shutting down",
    }.items()
}

ServiceDep = Annotated[RerankService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _echo(document: DocumentItem) -> dict[str, Any]:
    return {"text": document} if isinstance(document, str) else document


def _cohere_body(
    outcome: RerankOutcome, documents: list[DocumentItem], return_documents: bool, api_version: str
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for ranked in outcome.ranking:
        result: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
        if return_documents:
            result["document"] = _echo(documents[ranked.index])
        results.append(result)
    return {
        "id": uuid.uuid4().hex,
        "results": results,
        "meta": {
            "api_version": {"version": api_version},
            "billed_units": {"search_units": max(1, math.ceil(outcome.chunks / 100))},
            "tokens": {"input_tokens": outcome.input_tokens, "output_tokens": 0},
        },
    }


async def _rerank(
    body: RerankRequest, service: RerankService, settings: Settings, api_version: str
) -> JSONResponse:
    query, documents = to_query(body, settings.max_documents)
    outcome = await service.rerank(query)
    headers = {"x-model-version": str(outcome.version)}
    content = _cohere_body(outcome, documents, bool(body.return_documents), api_version)
    return JSONResponse(content, headers=headers)


def _cohere_endpoint(api_version: str) -> Callable[..., Awaitable[JSONResponse]]:
    async def endpoint(body: RerankRequest, service: ServiceDep, settings: SettingsDep) -> JSONResponse:
        return await _rerank(body, service, settings, api_version)

    return endpoint


# (path, summary, meta.api_version of the answer). The cohere SDK concatenates its base_url and `/v1/rerank`
# or `/v2/rerank`, so a base_url ending in `/v3` (OVMS's prefix) lands on `/v3/v1/rerank` or `/v3/v2/rerank`.
_COHERE_ROUTES = [
    ("/v1/rerank", "Rerank (Cohere v1; object documents with rank_fields)", "1"),
    ("/v2/rerank", "Rerank (Cohere v2)", "2"),
    ("/v3/rerank", "Rerank (OpenVINO Model Server path)", "2"),
    ("/v3/v1/rerank", "Rerank (Cohere v1 SDK with base_url .../v3)", "1"),
    ("/v3/v2/rerank", "Rerank (Cohere v2 SDK with base_url .../v3)", "2"),
]

for _path, _summary, _version in _COHERE_ROUTES:
    router.add_api_route(
        _path,
        _cohere_endpoint(_version),
        methods=["POST"],
        summary=_summary,
        response_model=RerankResponse,
        responses=_ERRORS,
        name=f"rerank {_path}",
    )


@router.post(
    "/rerank",
    summary="Rerank (Cohere container path; TEI shape when the body has `texts`)",
    response_model=RerankResponse | list[TeiRank],
    responses=_ERRORS,
)
async def rerank_compat(
    request: Request, body: RerankRequest, service: ServiceDep, settings: SettingsDep
) -> JSONResponse:
    """Cohere's container path; a TEI body (`texts`) gets TEI's bare array of `{index, score, text?}`."""
    if not body.is_tei:
        return await _rerank(body, service, settings, "2")
    request.state.tei = True
    query, _ = to_query(body, settings.max_documents)
    outcome = await service.rerank(query)
    ranks = []
    for ranked in outcome.ranking:
        item: dict[str, Any] = {"index": ranked.index, "score": ranked.score}
        if body.return_text:
            item["text"] = query.documents[ranked.index]
        ranks.append(item)
    return JSONResponse(ranks, headers={"x-model-version": str(outcome.version)})
