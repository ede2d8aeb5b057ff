"""A corpus of bad requests: each gets its documented 4xx with a JSON message, never a 5xx, and the server
keeps serving."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.rerank_runtime.server.conftest import API_KEY
from tests.rerank_runtime.server.live_server import LiveServer

NAME = "cross-encoder/ms-marco-MiniLM-L-6-v2"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"content-type": "application/json"}


def _body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": NAME, "query": "welcome", "documents": ["good morning", "farewell"]}
    for key, value in fields.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()


@dataclass
class Case:
    """One bad request and the status the API documents for it."""

    name: str
    status: int
    json_body: Any = None
    raw: bytes | None = None
    path: str = "/v1/rerank"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: {**AUTH, **JSON})


CASES = [
    Case("malformed JSON", 400, raw=b'{"query": "welcome", "documents": ['),
    Case("not JSON at all", 400, raw=b"hello there"),
    Case("empty body", 400, raw=b""),
    Case("invalid UTF-8", 400, raw=b'{"query": "\xff\xfe", "documents": ["a"]}'),
    Case(
        "deeply nested JSON",
        400,
        raw=b'{"query": "q", "documents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ),
    Case("JSON array body", 422, json_body=[1, 2, 3]),
    Case("JSON string body", 422, json_body="welcome"),
    Case("query is a number", 422, json_body=_body(query=42)),
    Case("query is a list", 422, json_body=_body(query=["welcome"])),
    Case("query missing", 422, json_body=_body(query=_DROP)),
    Case("query null", 422, json_body=_body(query=None)),
    Case("query empty", 422, json_body=_body(query="")),
    Case("query blank", 422, json_body=_body(query="   \n\t")),
    Case("documents missing", 400, json_body=_body(documents=_DROP)),
    Case("documents null", 422, json_body=_body(documents=None)),
    Case("documents empty", 422, json_body=_body(documents=[])),
    Case("documents is a string", 422, json_body=_body(documents="good morning")),
    Case("document is a number", 422, json_body=_body(documents=["ok", 3])),
    Case("document is null", 422, json_body=_body(documents=["ok", None])),
    Case("document is a nested list", 422, json_body=_body(documents=[["a", "b"]])),
    Case(
        "object document without text", 400, json_body=_body(documents=[{"title": "x"}], rank_fields=["text"])
    ),
    Case("empty object document", 422, json_body=_body(documents=[{}])),
    Case("rank_fields is a string", 422, json_body=_body(rank_fields="text")),
    Case("top_n is a string", 422, json_body=_body(top_n="3")),
    Case("top_n is a float", 422, json_body=_body(top_n=1.5)),
    Case("top_n zero", 422, json_body=_body(top_n=0)),
    Case("top_n negative", 422, json_body=_body(top_n=-1)),
    Case("top_n NaN", 422, raw=b'{"query": "q", "documents": ["a"], "top_n": NaN}'),
    Case("return_documents is a string", 422, json_body=_body(return_documents="yes")),
    Case("raw_scores is a string", 422, json_body=_body(raw_scores="true")),
    Case("max_chunks_per_doc zero", 422, json_body=_body(max_chunks_per_doc=0)),
    Case("max_tokens_per_doc negative", 422, json_body=_body(max_tokens_per_doc=-5)),
    Case("model is a number", 422, json_body=_body(model=7)),
    Case("model empty", 422, json_body=_body(model="")),
    Case("unknown model", 404, json_body=_body(model="no-such/model")),
    Case("documents and texts together", 400, json_body=_body(texts=["a"]), path="/rerank"),
    Case("TEI texts with a number", 422, json_body={"query": "q", "texts": ["a", 1]}, path="/rerank"),
    Case("10,000 documents", 413, json_body=_body(documents=[f"document {i}" for i in range(10_000)])),
    Case("11 MB query", 413, json_body=_body(query="x" * (11 * 1024 * 1024))),
    Case(
        "Content-Length over the limit",
        413,
        raw=b"{}",
        headers={**AUTH, **JSON, "content-length": "99999999"},
    ),
    Case("missing API key", 401, json_body=_body(), headers=JSON),
    Case("malformed JSON without an API key", 401, raw=b'{"query": ', headers=JSON),
    Case("texts null", 422, json_body={"query": "q", "texts": None}, path="/rerank"),
    Case(
        "deadline header not a number",
        422,
        json_body=_body(),
        headers={**AUTH, **JSON, "x-request-timeout": "soon"},
    ),
    Case("deadline header zero", 422, json_body=_body(), headers={**AUTH, **JSON, "x-request-timeout": "0"}),
    Case("wrong API key", 401, json_body=_body(), headers={**JSON, "Authorization": "Bearer nope"}),
    Case("wrong auth scheme", 401, json_body=_body(), headers={**JSON, "Authorization": f"Basic {API_KEY}"}),
    Case(
        "wrong key on /v1/models", 401, path="/v1/models", method="GET", headers={"Authorization": "Bearer x"}
    ),
    Case("unknown route", 404, json_body=_body(), path="/v4/rerank"),
    Case("GET on a rerank route", 405, path="/v1/rerank", method="GET"),
    Case("unknown model metadata", 404, path="/v2/models/no-such%2Fmodel", method="GET"),
    Case("unknown model readiness", 404, path="/v2/models/no-such%2Fmodel/ready", method="GET"),
]


def _send(client: httpx.Client, case: Case) -> httpx.Response:
    content = case.raw if case.raw is not None else None
    if case.json_body is not None:
        content = json.dumps(case.json_body).encode()
    headers = dict(case.headers)
    if case.method == "GET":
        return client.get(case.path, headers=headers)
    if "content-length" in headers:
        return _post_declaring_length(client, case.path, headers, content or b"")
    return client.post(case.path, headers=headers, content=content)


def _post_declaring_length(
    client: httpx.Client, path: str, headers: dict[str, str], body: bytes
) -> httpx.Response:
    """Announce a huge Content-Length but send a short body (httpx refuses to); the server must not wait."""
    url = httpx.URL(str(client.base_url))
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        raw = connection.getresponse()
        return httpx.Response(raw.status, headers=raw.getheaders(), content=raw.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def client(f32_server: LiveServer, minilm_repository: tuple[Path, str]) -> httpx.Client:
    assert minilm_repository[1] == NAME
    return httpx.Client(base_url=f32_server.base_url, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_request_gets_documented_error(client: httpx.Client, case: Case) -> None:
    """The documented status, a JSON `{id, message}` body, and a good request still works right after."""
    response = _send(client, case)
    assert response.status_code == case.status, response.text[:300]
    body = response.json()
    assert isinstance(body["id"], str) and body["id"]
    assert isinstance(body["message"], str) and body["message"].strip()
    if case.status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    good = client.post("/v1/rerank", headers=AUTH, json=_body())
    assert good.status_code == 200
    assert good.headers["x-model-version"] == "1"


def test_corpus_is_large_enough_and_left_no_server_errors(client: httpx.Client) -> None:
    """At least 30 distinct bad requests, and /metrics records no 5xx response at all."""
    assert len(CASES) >= 30
    for case in CASES:
        assert _send(client, case).status_code == case.status
    metrics = client.get("/metrics").text
    # Readiness answered 503 while the model was loading; every other route must be free of 5xx.
    server_errors = [
        line for line in metrics.splitlines() if 'code="5' in line and "/v2/health/ready" not in line
    ]
    assert server_errors == []
    assert 'code="413"' in metrics and 'code="422"' in metrics
