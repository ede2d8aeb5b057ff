"""Clients that stall, trickle or hang up: cut after the documented timeouts, their work is not done, and
everybody else is served as usual."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.rerank_runtime.server.conftest import API_KEY, server_settings
from tests.rerank_runtime.server.live_server import LiveServer, live_server, wait_until

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SMALL = {"query": "welcome", "documents": ["good morning", "farewell"]}
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEP_ALIVE = 2
MAX_BATCH_TOKENS = 2048


@pytest.fixture(scope="module")
def server(minilm_repository: tuple[Path, str]) -> Iterator[LiveServer]:
    """A server with short client timeouts and a long latency budget (nothing is refused for time)."""
    root, name = minilm_repository
    settings = server_settings(
        root,
        models=[name],
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        keep_alive_timeout=KEEP_ALIVE,
        max_batch_tokens=MAX_BATCH_TOKENS,
        max_queue_rows=100_000,
        max_inflight_requests=1000,
        latency_budget=600.0,
    )
    with live_server(settings) as handle:
        yield handle


def _address(server: LiveServer) -> tuple[str, int]:
    url = urlsplit(server.base_url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def _head(body_length: int) -> bytes:
    return (
        f"POST /v1/rerank HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body_length}\r\n\r\n"
    ).encode()


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed (seconds)."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def _latency(client: httpx.Client) -> float:
    started = time.perf_counter()
    assert client.post("/v1/rerank", json=SMALL, headers=AUTH).status_code == 200
    return time.perf_counter() - started


def test_stalled_and_trickling_clients_are_cut_and_others_unaffected(server: LiveServer) -> None:
    """A stalled body and a trickling body get 408 and a closed connection after the body timeout; a
    stalled head is closed after the head timeout; requests on other connections keep their latency."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        baseline = statistics.median(_latency(client) for _ in range(5))
        stalled_body = socket.create_connection(_address(server))
        stalled_body.sendall(_head(1000) + b'{"query": "q", ')
        stalled_head = socket.create_connection(_address(server))
        stalled_head.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: test\r\n")
        trickle = socket.create_connection(_address(server))
        trickle.sendall(_head(1000))
        stop = threading.Event()

        def drip() -> None:
            with contextlib.suppress(OSError):  # the server closes the connection at the timeout
                while not stop.wait(0.3):
                    trickle.sendall(b" ")  # one byte every 0.3 s: never stalls, never finishes

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        with ThreadPoolExecutor(3) as pool:
            body_result = pool.submit(_read_until_closed, stalled_body, BODY_TIMEOUT + 10)
            head_result = pool.submit(_read_until_closed, stalled_head, HEADER_TIMEOUT + 10)
            trickle_result = pool.submit(_read_until_closed, trickle, BODY_TIMEOUT + 10)
            during = [_latency(client) for _ in range(10)]
            body_data, body_closed = body_result.result()
            head_data, head_closed = head_result.result()
            trickle_data, trickle_closed = trickle_result.result()
        stop.set()
        for sock in (stalled_body, stalled_head, trickle):
            sock.close()
    assert body_data.startswith(b"HTTP/1.1 408"), body_data[:200]
    assert b"connection: close" in body_data.lower()
    assert json.loads(body_data.split(b"\r\n\r\n", 1)[1])["message"].startswith("request body not received")
    assert trickle_data.startswith(b"HTTP/1.1 408"), trickle_data[:200]
    assert head_data.startswith(b"HTTP/1.1 408"), head_data[:200]
    for closed, limit in (
        (body_closed, BODY_TIMEOUT),
        (trickle_closed, BODY_TIMEOUT),
        (head_closed, HEADER_TIMEOUT),
    ):
        assert limit - 0.2 <= closed <= limit + 1.5, (closed, limit)
    assert statistics.median(during) <= 3 * baseline + 0.05, (baseline, during)
    print(
        f"\nslow clients: stalled body cut after {body_closed:.2f}s, trickling body after "
        f"{trickle_closed:.2f}s (body timeout {BODY_TIMEOUT}s), stalled head after {head_closed:.2f}s "
        f"(head timeout {HEADER_TIMEOUT}s); others' median latency "
        f"{statistics.median(during) * 1000:.1f} ms vs {baseline * 1000:.1f} ms before"
    )


def test_idle_connections_are_closed(server: LiveServer) -> None:
    """A connection that sends nothing is closed after the head timeout; an idle keep-alive connection after
    the keep-alive timeout."""
    silent = socket.create_connection(_address(server))
    data, closed = _read_until_closed(silent, HEADER_TIMEOUT + 10)
    silent.close()
    assert HEADER_TIMEOUT - 0.2 <= closed <= HEADER_TIMEOUT + 1.5 and data.startswith(b"HTTP/1.1 408")
    idle = socket.create_connection(_address(server))
    body = json.dumps(SMALL).encode()
    idle.sendall(_head(len(body)) + body)
    data, closed = _read_until_closed(idle, KEEP_ALIVE + 10)
    idle.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert closed <= KEEP_ALIVE + 1.5, closed


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_clients_that_hang_up_get_no_work_done(
    server: LiveServer, minilm_repository: tuple[Path, str]
) -> None:
    """100 clients send a request larger than a batch and hang up: their queued rows are withdrawn before
    scoring (at most the batches already running finish), the queue is empty within 1 s, and a small
    request right after is answered at its usual latency."""
    name = minilm_repository[1]
    clients, documents = 100, 60
    # Identical documents: every row has the same length, so rows per batch is exact.
    body = json.dumps(
        {"query": "welcome", "documents": ["the quick brown fox jumps over the lazy dog " * 4] * documents}
    )
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        probe = client.post("/v1/rerank", json=json.loads(body), headers=AUTH).json()
        row_tokens = probe["meta"]["tokens"]["input_tokens"] // documents
        rows_per_batch = MAX_BATCH_TOKENS // row_tokens
        assert documents > rows_per_batch, "each request must need more than one batch"
        baseline = statistics.median(_latency(client) for _ in range(5))
        before = client.get("/metrics").text
        scored_before = _metric(before, f'rerank_batch_size_sum{{model="{name}"}}')
        sockets = []
        for _ in range(clients):
            sock = socket.create_connection(_address(server))
            sock.sendall(_head(len(body.encode())) + body.encode())
            sockets.append(sock)

        def all_queued() -> bool:
            text = client.get("/metrics").text
            queued = _metric(text, f'rerank_queue_depth{{model="{name}"}}')
            scored = _metric(text, f'rerank_batch_size_sum{{model="{name}"}}') - scored_before
            return queued + scored >= clients * documents * 0.9

        wait_until(all_queued, 120, "the clients' rows to be queued")
        at_hang_up = client.get("/metrics").text
        batcher = server.service.models[name].current.batcher  # type: ignore[union-attr]
        assert batcher is not None
        for sock in sockets:
            sock.close()
        hung_up = time.monotonic()
        wait_until(lambda: batcher.queued_rows == 0, 1.0, "the queue to empty after the clients left", 0.02)
        emptied = time.monotonic() - hung_up
        wait_until(lambda: batcher._in_flight == 0, 30, "the running batches to finish")
        after = client.get("/metrics").text
        assert _metric(after, f'rerank_queue_depth{{model="{name}"}}') == 0
        after_latency = statistics.median(_latency(client) for _ in range(5))
    capacity = server.service.models[name].current.runner.capacity  # type: ignore[union-attr]
    scored_total = _metric(after, f'rerank_batch_size_sum{{model="{name}"}}') - scored_before
    scored_after_hang_up = _metric(after, f'rerank_batch_size_sum{{model="{name}"}}') - _metric(
        at_hang_up, f'rerank_batch_size_sum{{model="{name}"}}'
    )
    cancelled = _metric(after, f'rerank_cancelled_rows_total{{model="{name}",stage="queued"}}')
    assert scored_total <= clients * rows_per_batch, (scored_total, rows_per_batch)
    assert scored_after_hang_up <= (capacity + 1) * rows_per_batch + 10, scored_after_hang_up
    assert cancelled >= clients * documents * 0.9 - scored_total
    assert after_latency <= 3 * baseline + 0.05, (baseline, after_latency)
    print(
        f"\ndisconnect: {clients} clients x {documents} rows ({rows_per_batch} rows per batch); scored "
        f"{scored_total:.0f} rows in all ({scored_total / clients:.1f} per client), "
        f"{scored_after_hang_up:.0f} after the hang-up; {cancelled:.0f} rows withdrawn unscored; queue empty "
        f"{emptied * 1000:.0f} ms after the hang-up; small request {after_latency * 1000:.1f} ms after "
        f"vs {baseline * 1000:.1f} ms before"
    )
