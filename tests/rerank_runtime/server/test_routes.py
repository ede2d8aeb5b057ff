"""Every documented route answers in its documented shape: TEI, models, metadata, metrics, OpenAPI."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.rerank_runtime.server.conftest import API_KEY
from tests.rerank_runtime.server.live_server import LiveServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
RERANK_PATHS = ["/v1/rerank", "/v2/rerank", "/v3/rerank", "/v3/v1/rerank", "/v3/v2/rerank", "/rerank"]


def test_every_rerank_path_gives_the_same_ranking(f32_server: LiveServer) -> None:
    """All Cohere/OVMS paths rank alike and name the scoring version in `x-model-version`."""
    body = {"query": "welcome", "documents": ["good morning", "farewell", "hello and welcome"], "top_n": 2}
    rankings = []
    for path in RERANK_PATHS:
        response = httpx.post(f"{f32_server.base_url}{path}", json=body, headers=AUTH)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["x-model-version"] == "1"
        payload = response.json()
        assert payload["id"] and payload["meta"]["billed_units"]["search_units"] == 1
        assert payload["meta"]["tokens"]["input_tokens"] > 0
        rankings.append([(r["index"], round(r["relevance_score"], 6)) for r in payload["results"]])
    assert all(ranking == rankings[0] for ranking in rankings)
    assert len(rankings[0]) == 2


def test_tei_shape_on_rerank_with_texts(f32_server: LiveServer) -> None:
    """`/rerank` with `texts` answers TEI's bare array; `return_text` echoes; errors carry `error_type`."""
    texts = ["good morning", "farewell"]
    body = {"query": "welcome", "texts": texts, "return_text": True}
    response = httpx.post(f"{f32_server.base_url}/rerank", json=body, headers=AUTH)
    assert response.status_code == 200
    ranks = response.json()
    assert isinstance(ranks, list) and {r["index"] for r in ranks} == {0, 1}
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    assert all(r["text"] == texts[r["index"]] for r in ranks)
    bad = httpx.post(f"{f32_server.base_url}/rerank", json={"query": " ", "texts": ["a"]}, headers=AUTH)
    assert bad.status_code == 422
    assert bad.json()["error_type"] == "Validation" and bad.json()["error"] == bad.json()["message"]


def test_models_metadata_and_metrics(f32_server: LiveServer, minilm_repository: tuple[Path, str]) -> None:
    """`/v1/models`, `/v2/models/{name}` and `/metrics` describe what is served."""
    name = minilm_repository[1]
    models = httpx.get(f"{f32_server.base_url}/v1/models", headers=AUTH).json()
    assert models["data"] == [
        {"id": name, "object": "model", "owned_by": "rerank-operator", "version": 1, "ready": True}
    ]
    metadata = httpx.get(f"{f32_server.base_url}/v2/models/{name.replace('/', '%2F')}").json()
    assert metadata["served_version"] == 1
    assert metadata["versions"] == [{"version": 1, "state": "AVAILABLE", "error": None}]
    assert metadata["inference_precision"] == "f32" and metadata["max_length"] == 512
    assert httpx.get(f"{f32_server.base_url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{f32_server.base_url}/v2/health/ready").json() == {"ready": True}
    httpx.post(f"{f32_server.base_url}/v2/rerank", json={"query": "q", "documents": ["d"]}, headers=AUTH)
    metrics = httpx.get(f"{f32_server.base_url}/metrics").text
    for metric in (
        'rerank_requests_total{code="200",route="/v2/rerank"}',
        'rerank_request_duration_seconds_bucket{le="0.005",route="/v2/rerank"}',
        f'rerank_queue_depth{{model="{name}"}}',
        f'rerank_batch_size_count{{model="{name}"}}',
        f'rerank_batch_tokens_count{{model="{name}"}}',
        f'rerank_served_version{{model="{name}"}} 1.0',
        f'rerank_model_load_seconds{{model="{name}",version="1"}}',
    ):
        assert metric in metrics, metric


def test_openapi_documents_every_route(f32_server: LiveServer) -> None:
    """The OpenAPI document (served with /docs) lists every route."""
    paths = httpx.get(f"{f32_server.base_url}/openapi.json").json()["paths"]
    expected = [*RERANK_PATHS, "/v2/health/live", "/v2/health/ready", "/v1/models", "/metrics"]
    assert all(path in paths for path in expected), sorted(paths)
    assert "/v2/models/{name}/ready" in paths and "/v2/models/{name}" in paths


def test_openapi_states_what_the_server_enforces(
    f32_server: LiveServer, minilm_repository: tuple[Path, str]
) -> None:
    """Bounds, status codes and examples in the schema match the server: a client generating requests
    from it gets no surprise 400s, and the example names a model that is served."""
    schema = httpx.get(f"{f32_server.base_url}/openapi.json").json()
    request = schema["components"]["schemas"]["RerankRequest"]
    fields = request["properties"]
    for name in ("top_n", "max_tokens_per_doc", "max_chunks_per_doc"):
        assert fields[name]["anyOf"][0]["minimum"] == 1, name
    assert fields["documents"]["minItems"] == 1 and fields["documents"]["maxItems"] == 1000
    assert fields["texts"]["maxItems"] == 1000 and "null" not in str(fields["texts"])
    assert "query" in request["required"] and fields["query"]["pattern"] == "\\S"
    assert request["examples"][0]["model"] == minilm_repository[1]
    paths = schema["paths"]
    for path in RERANK_PATHS:
        documented = set(paths[path]["post"]["responses"])
        assert {"200", "400", "401", "404", "408", "413", "422", "429", "503"} <= documented, path
        assert "Retry-After" in paths[path]["post"]["responses"]["429"]["headers"]
    assert {"200", "404", "503"} <= set(paths["/v2/models/{name}/ready"]["get"]["responses"])
    assert "404" in paths["/v2/models/{name}"]["get"]["responses"]
    assert "503" in paths["/v2/health/ready"]["get"]["responses"]
    # The example request works as written.
    example = request["examples"][0]
    assert httpx.post(f"{f32_server.base_url}/v1/rerank", json=example, headers=AUTH).status_code == 200


def test_docs_work_without_internet(f32_server: LiveServer) -> None:
    """/docs loads Swagger UI from this server only (no CDN), and every asset it names is served."""
    page = httpx.get(f"{f32_server.base_url}/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url: *["']([^"']+)["']""", page.text)
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
    for url in urls:
        response = httpx.get(f"{f32_server.base_url}{url}")
        assert response.status_code == 200 and response.content, url
    script = httpx.get(f"{f32_server.base_url}/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in script
    assert httpx.get(f"{f32_server.base_url}/redoc").status_code == 404
