"""Overload and not-ready answers: 429 / 503 with Retry-After, never a 5xx crash, and recovery afterwards."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.rerank_runtime.server.conftest import API_KEY, server_settings
from tests.rerank_runtime.server.live_server import live_server, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_full_queue_answers_429_with_retry_after(minilm_repository: tuple[Path, str]) -> None:
    """With a small queue, a burst of large requests gets 429 + Retry-After for what does not fit."""
    root, name = minilm_repository
    settings = server_settings(root, models=[name], max_queue_rows=30, max_batch_tokens=2048)
    body = {"model": name, "query": "welcome", "documents": [f"document {i} " * 50 for i in range(25)]}
    with live_server(settings) as server, ThreadPoolExecutor(8) as pool:

        def send(_: int) -> httpx.Response:
            return httpx.post(f"{server.base_url}/v2/rerank", json=body, headers=AUTH, timeout=120)

        responses = list(pool.map(send, range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        for response in responses:
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert "busy" in response.json()["message"]
        assert send(0).status_code == 200


def test_model_not_loaded_answers_503_with_retry_after(
    minilm_repository: tuple[Path, str], tmp_path: Path
) -> None:
    """A configured model without versions: ready 503, rerank 503 + Retry-After; served once published."""
    root, name = minilm_repository
    empty = tmp_path / "repository"
    empty.mkdir()
    with live_server(server_settings(empty, models=[name], poll_interval=0.2), wait_ready=False) as server:
        encoded = name.replace("/", "%2F")
        assert httpx.get(f"{server.base_url}/v2/models/{encoded}/ready").status_code == 503
        body = {"query": "welcome", "documents": ["good morning"]}
        response = httpx.post(f"{server.base_url}/v1/rerank", json=body, headers=AUTH)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        # The repository gains the model: the watcher loads it and the same request succeeds.
        shutil.copytree(root / name, empty / name)
        wait_until(
            lambda: httpx.get(f"{server.base_url}/v2/models/{encoded}/ready").status_code == 200,
            60,
            "the model to load after it was published",
        )
        assert httpx.post(f"{server.base_url}/v1/rerank", json=body, headers=AUTH).status_code == 200
