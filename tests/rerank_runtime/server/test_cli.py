"""`rerank-serve` as a process: several models, env settings, SIGTERM drain, bad options."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerank_runtime.repository import ModelRepository
from tests.rerank_runtime.server.live_server import free_port, wait_until

SECOND_NAME = "team/second-reranker"


def _serve_command() -> list[str]:
    return [str(Path(sys.executable).with_name("rerank-serve"))]


@pytest.fixture(scope="module")
def two_model_repository(
    minilm_repository: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The MiniLM repository plus the same export published under a second served name."""
    root = tmp_path_factory.mktemp("two-models") / "repository"
    shutil.copytree(minilm_repository[0], root)
    repository = ModelRepository(root)
    source = repository.get(minilm_repository[1], 1)
    with repository.staging(SECOND_NAME) as staging:
        for relative in source.manifest.files:
            shutil.copy2(source.path / relative, staging / relative)
        repository.publish(SECOND_NAME, staging, source.manifest)
    return root


@pytest.fixture
def server_process(two_model_repository: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`rerank-serve` serving every model of the repository (no --model), settings partly from the env."""
    port = free_port()
    env = {**os.environ, "RERANK_RUNTIME_POLL_INTERVAL": "0.5", "RERANK_RUNTIME_PRECISION": "f32"}
    process = subprocess.Popen(
        [
            *_serve_command(),
            "--repository",
            str(two_model_repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--shutdown-delay",
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    try:
        wait_until(ready, 120, "rerank-serve readiness", 0.2)
        assert process.poll() is None, process.communicate()[0]
        yield process, base_url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_several_models_and_sigterm_drain(server_process: tuple[subprocess.Popen[str], str]) -> None:
    """Both names are served and selected by `model`; on SIGTERM readiness drops, running work finishes,
    and the process exits 0."""
    process, base_url = server_process
    models = httpx.get(f"{base_url}/v1/models").json()["data"]
    assert {m["id"] for m in models} == {"cross-encoder/ms-marco-MiniLM-L-6-v2", SECOND_NAME}
    assert all(m["ready"] and m["version"] == 1 for m in models)
    body = {"query": "welcome", "documents": ["good morning", "farewell"]}
    for name in (m["id"] for m in models):
        response = httpx.post(f"{base_url}/v2/rerank", json={**body, "model": name})
        assert response.status_code == 200 and response.headers["x-model-version"] == "1"
        assert httpx.get(f"{base_url}/v2/models/{name.replace('/', '%2F')}/ready").status_code == 200
    ambiguous = httpx.post(f"{base_url}/v2/rerank", json=body)
    assert ambiguous.status_code == 400 and "model" in ambiguous.json()["message"]

    # A large request is running when SIGTERM arrives; it must still complete.
    big = {**body, "model": SECOND_NAME, "documents": [f"document number {i} " * 40 for i in range(150)]}
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(
        target=lambda: result.setdefault("big", httpx.post(f"{base_url}/v1/rerank", json=big, timeout=120))
    )
    worker.start()
    wait_until(lambda: "rerank_queue_depth" in _queued(base_url), 30, "the big request to be queued")
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: _ready_status(base_url) == 503, 5, "readiness to go false")
    worker.join(timeout=120)
    assert result["big"].status_code == 200
    assert len(result["big"].json()["results"]) == 150
    assert process.wait(timeout=60) == 0


def test_requests_during_the_shutdown_delay_are_served(minilm_repository: tuple[Path, str]) -> None:
    """After SIGTERM the server is not ready at once, but for --shutdown-delay seconds it still serves new
    requests: a load balancer (kube-proxy) keeps sending some until it has seen the pod go not-ready, and
    refusing them would fail requests during every rollout."""
    root, name = minilm_repository
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*_serve_command(), "--repository", str(root), "--host", "127.0.0.1", "--port", str(port),
         "--shutdown-delay", "5", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    body = {"model": name, "query": "welcome", "documents": ["good morning", "farewell"]}
    try:
        wait_until(lambda: _ready_status(base_url) == 200 or process.poll() is not None, 120, "readiness")
        assert process.poll() is None, process.communicate()[0]
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: _ready_status(base_url) == 503, 5, "readiness to go false")
        response = httpx.post(f"{base_url}/v2/rerank", json=body, timeout=10)
        assert response.status_code == 200, response.text
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _ready_status(base_url: str) -> int:
    """Readiness status code; 0 once the server no longer accepts connections."""
    try:
        return httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code
    except httpx.TransportError:
        return 0


def _queued(base_url: str) -> str:
    """Metrics lines showing rows waiting for inference (empty when nothing is queued)."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=2).text
    except httpx.TransportError:
        return ""
    return "\n".join(
        line
        for line in text.splitlines()
        if line.startswith("rerank_queue_depth") and not line.endswith(" 0.0")
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repository", "/nonexistent/repository"], "is not a directory"),
        (["--repository", "/tmp", "--port", "0"], "port"),
        (["--repository", "/tmp", "--api-key-file", "/nonexistent/key"], "cannot read api key file"),
    ],
)
def test_bad_options_exit_with_one_clear_line(args: list[str], message: str) -> None:
    """Bad settings stop the server before it starts, with one `error:` line and a non-zero exit code."""
    completed = subprocess.run([*_serve_command(), *args], capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], completed.stderr
