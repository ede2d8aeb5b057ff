"""Rerank routes: Cohere v1/v2, OVMS `/v3/...` paths, and `/rerank` (Cohere container path, TEI shape)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from starlette.types import Receive

from rerank_runtime.engine.serving import RerankOutcome, RerankQuery, RerankService
from rerank_runtime.server.dependencies import get_service, get_settings, require_api_key
from rerank_runtime.server.errors import CLIENT_CLOSED, ClientDisconnectedError
from rerank_runtime.server.schemas import (
    DocumentItem,
    ErrorBody,
    RerankRequest,
    RerankResponse,
    TeiRank,
    not_null,
    to_query,
)
from rerank_runtime.server.settings import Settings

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["rerank"])

DEADLINE_HEADER = "x-request-timeout"

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid request: blank query, unknown rank field, text that is not valid Unicode"},
    401: {"description": "Missing or invalid API key (checked before the body is read)"},
    404: {"description": "Unknown model"},
    408: {"description": "Request body not received within the body timeout; the connection is closed"},
    413: {"description": "Request body or document count over the limit"},
    422: {"description": "Request does not match the schema"},
    429: {
        "description": "Expected completion beyond the waiting-time budget, deadline passed while queued, "
        "or queue full",
        "headers": _RETRY_AFTER,
    },
    CLIENT_CLOSED: {"description": "The client closed the connection first (only seen in metrics)"},
    503: {
        "description": "Model not ready, or shutting down",
        "headers": _RETRY_AFTER,
    },
}
for _response in _ERRORS.values():
    _response["model"] = ErrorBody
_VERSION_HEADER = {
    "x-model-version": {"description": "Model version that scored the request", "schema": {"type": "string"}}
}

ServiceDep = Annotated[RerankService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DeadlineHeader = Annotated[
    float | None,
    Header(
        alias=DEADLINE_HEADER,
        gt=0,
        allow_inf_nan=False,
        json_schema_extra=not_null,  # a header is absent or a number, never `null`
        description="Seconds this client will wait; a request expected to take longer is refused at once "
        "(429). The server's latency budget applies when it is shorter.",
    ),
]


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


def _deadline(request: Request, settings: Settings, timeout: float | None) -> float:
    """Monotonic time by which the answer must be ready: arrival plus the shorter of budget and header."""
    arrival = getattr(request.state, "received_at", None) or time.monotonic()
    budget = settings.latency_budget if timeout is None else min(timeout, settings.latency_budget)
    return float(arrival + budget)


async def _until_disconnected(receive: Receive) -> None:
    """Return when the client closes the connection (the request body has already been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _score(request: Request, service: RerankService, query: RerankQuery) -> RerankOutcome:
    """Serve `query`, abandoning it (and its queued rows) as soon as the client goes away."""
    work = asyncio.ensure_future(service.rerank(query))
    watch = asyncio.ensure_future(_until_disconnected(request.receive))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            # Cancelling the work removes its rows from the batcher's queue before they are scored.
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        raise ClientDisconnectedError()
    return work.result()


async def _rerank(
    request: Request,
    body: RerankRequest,
    service: RerankService,
    settings: Settings,
    api_version: str,
    client_timeout: float | None,
) -> JSONResponse:
    deadline = _deadline(request, settings, client_timeout)
    query, documents = to_query(body, settings.max_documents, deadline, client_timeout is not None)
    outcome = await _score(request, service, query)
    headers = {"x-model-version": str(outcome.version)}
    content = _cohere_body(outcome, documents, bool(body.return_documents), api_version)
    return JSONResponse(content, headers=headers)


def _cohere_endpoint(api_version: str) -> Callable[..., Awaitable[JSONResponse]]:
    async def endpoint(
        request: Request,
        body: RerankRequest,
        service: ServiceDep,
        settings: SettingsDep,
        client_timeout: DeadlineHeader = None,
    ) -> JSONResponse:
        return await _rerank(request, body, service, settings, api_version, client_timeout)

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
        responses={200: {"headers": _VERSION_HEADER}, **_ERRORS},
        name=f"rerank {_path}",
    )


@router.post(
    "/rerank",
    summary="Rerank (Cohere container path; TEI shape when the body has `texts`)",
    response_model=RerankResponse | list[TeiRank],
    responses={200: {"headers": _VERSION_HEADER}, **_ERRORS},
)
async def rerank_compat(
    request: Request,
    body: RerankRequest,
    service: ServiceDep,
    settings: SettingsDep,
    client_timeout: DeadlineHeader = None,
) -> JSONResponse:
    """Cohere's container path; a TEI body (`texts`) gets TEI's bare array of `{index, score, text?}`."""
    if not body.is_tei:
        return await _rerank(request, body, service, settings, "2", client_timeout)
    deadline = _deadline(request, settings, client_timeout)
    query, _ = to_query(body, settings.max_documents, deadline, client_timeout is not None)
    outcome = await _score(request, service, query)
    ranks = []
    for ranked in outcome.ranking:
        item: dict[str, Any] = {"index": ranked.index, "score": ranked.score}
        if body.return_text:
            item["text"] = query.documents[ranked.index]
        ranks.append(item)
    return JSONResponse(ranks, headers={"x-model-version": str(outcome.version)})
