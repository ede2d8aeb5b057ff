"""Ten times more load than the server can take, for a bounded time, on loopback against `rerank-serve` in its
own process: refusals are quick 429/503 with Retry-After, accepted requests finish within the latency budget
plus one batch, memory stays bounded, and the server is back to normal within a second of the load ending."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.rerank_runtime.server.live_server import free_port, wait_until

pytestmark = pytest.mark.slow

BUDGET = 3.0  # seconds: --latency-budget of the server under test
MAX_BATCH_TOKENS = 2048  # small batches: "one batch" stays short next to the budget
OVERLOAD = 10  # offered load / measured capacity
LOAD_SECONDS = 25.0
RSS_GROWTH_BOUND_MB = 400
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "rivers",
    "run",
    "to",
    "the",
    "sea",
]
SMALL = {"query": "welcome", "documents": ["good morning", "farewell"]}


def _documents(count: int, words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(count)]


BODY = {"query": "where do rivers run", "documents": _documents(20, 40, 1)}


@dataclass
class Outcome:
    status: int
    seconds: float
    retry_after: str | None


@pytest.fixture(scope="module")
def server(minilm_repository: tuple[Path, str]) -> Iterator[tuple[str, int]]:
    """`rerank-serve` in its own process: (base URL, pid)."""
    root, name = minilm_repository
    port = free_port()
    env = {**os.environ, "RERANK_RUNTIME_LATENCY_BUDGET": str(BUDGET)}
    command = [sys.executable, "-m", "rerank_runtime.server.cli", "--repository", str(root), "--model", name]
    command += ["--host", "127.0.0.1", "--port", str(port), "--precision", "f32", "--log-level", "warning"]
    command += ["--max-batch-tokens", str(MAX_BATCH_TOKENS)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    try:
        wait_until(ready, 180, "rerank-serve readiness", 0.2)
        assert process.poll() is None, process.communicate()[1][-3000:]
        yield base_url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in "{ "
    )


def _histogram_quantile(text: str, name: str, quantile: float) -> float:
    """Upper bound of the bucket holding `quantile` of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= quantile * total)


async def _send(client: httpx.AsyncClient, body: dict[str, object]) -> Outcome:
    started = time.perf_counter()
    response = await client.post("/v1/rerank", json=body)
    return Outcome(response.status_code, time.perf_counter() - started, response.headers.get("retry-after"))


async def _capacity(base_url: str) -> float:
    """Requests per second the server completes when saturated (4 clients back to back for 6 s)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        done = 0
        end = time.monotonic() + 6

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < end:
                if (await _send(client, BODY)).status == 200:
                    done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(4)))
        return done / (time.monotonic() - started)


async def _overload(base_url: str, pid: int, rate: float) -> tuple[list[Outcome], int, float]:
    """Open-loop arrivals at `rate`/s for LOAD_SECONDS; then every client still waiting hangs up.
    Returns the finished outcomes, how many were abandoned, and the peak RSS (MB)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    outcomes: list[Outcome] = []
    peak = _rss_mb(pid)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        tasks: list[asyncio.Task[Outcome]] = []
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - started < LOAD_SECONDS:
            while sent < (now - started) * rate:
                tasks.append(asyncio.ensure_future(_send(client, BODY)))
                sent += 1
            peak = max(peak, _rss_mb(pid))
            await asyncio.sleep(0.02)
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        outcomes = [task.result() for task in tasks if not task.cancelled() and task.exception() is None]
    return outcomes, len(pending), peak


def test_ten_times_capacity_is_refused_quickly_and_recovers(server: tuple[str, int]) -> None:
    base_url, pid = server
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for _ in range(3):
            assert client.post("/v1/rerank", json=BODY).status_code == 200  # warm
        baseline = statistics.median(_latency(client) for _ in range(7))
    capacity = asyncio.run(_capacity(base_url))
    rss_before = _rss_mb(pid)
    outcomes, abandoned, peak = asyncio.run(_overload(base_url, pid, OVERLOAD * capacity))
    ended = time.monotonic()
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while _metric(client.get("/metrics").text, "rerank_queue_depth") > 0:
            assert time.monotonic() - ended < 1.0, "the queue did not empty within 1 s of the load ending"
            time.sleep(0.01)
        emptied = time.monotonic() - ended
        after = statistics.median(_latency(client) for _ in range(7))
        metrics = client.get("/metrics").text
    statuses = {
        status: sum(o.status == status for o in outcomes) for status in sorted({o.status for o in outcomes})
    }
    refused = [o for o in outcomes if o.status in (429, 503)]
    accepted = sorted(o.seconds for o in outcomes if o.status == 200)
    p99 = accepted[min(len(accepted) - 1, math.ceil(0.99 * len(accepted)) - 1)]
    batch = _histogram_quantile(metrics, "rerank_batch_duration_seconds", 0.99)
    refusal_p99 = sorted(o.seconds for o in refused)[int(0.99 * (len(refused) - 1))]
    print(
        f"\noverload: capacity {capacity:.2f} req/s, offered {OVERLOAD * capacity:.1f} req/s for "
        f"{LOAD_SECONDS:.0f} s ({len(outcomes) + abandoned} requests); statuses {statuses}, {abandoned} "
        f"abandoned at the end; accepted p50 {statistics.median(accepted):.2f} s, p99 {p99:.2f} s (budget "
        f"{BUDGET} s + batch p99 {batch} s); refusals p99 {refusal_p99 * 1000:.0f} ms, all with Retry-After; "
        f"RSS {rss_before:.0f} MB before, peak {peak:.0f} MB (bound +{RSS_GROWTH_BOUND_MB} MB); queue empty "
        f"{emptied * 1000:.0f} ms after the load; small request {after * 1000:.1f} ms after vs "
        f"{baseline * 1000:.1f} ms before"
    )
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.get(200, 0) > 0 and len(refused) > len(accepted), statuses
    assert all(o.retry_after is not None and int(o.retry_after) >= 1 for o in refused)
    assert p99 <= BUDGET + batch + 0.5, (p99, batch)
    assert peak - rss_before <= RSS_GROWTH_BOUND_MB, (rss_before, peak)
    assert after <= 3 * baseline + 0.05, (baseline, after)


def _latency(client: httpx.Client) -> float:
    started = time.perf_counter()
    assert client.post("/v1/rerank", json=SMALL).status_code == 200
    return time.perf_counter() - started
