"""Async load client: sends a workload to a rerank endpoint at a given request rate and measures it."""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from rerank_runtime.bench.workload import Workload
from rerank_runtime.terminal import is_terminal, progress_bar


@dataclass
class BenchResult:
    """What one run measured."""

    requests: int
    documents: int
    succeeded: int = 0
    input_tokens: int = 0
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Share of requests answered 200."""
        return self.succeeded / self.requests if self.requests else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Input tokens of successful requests per wall-clock second."""
        return self.input_tokens / self.duration if self.duration else 0.0

    def latency(self, quantile: float) -> float:
        """Latency quantile in seconds (0.5 = median)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]

    def summary(self) -> dict[str, Any]:
        """Figures as a JSON-friendly dict."""
        return {
            "requests": self.requests,
            "documents": self.documents,
            "succeeded": self.succeeded,
            "success_rate": self.success_rate,
            "input_tokens": self.input_tokens,
            "duration_s": self.duration,
            "throughput_tokens_per_s": self.tokens_per_second,
            "throughput_requests_per_s": self.succeeded / self.duration if self.duration else 0.0,
            "latency_mean_ms": statistics.fmean(self.latencies) * 1000 if self.latencies else None,
            "latency_median_ms": self.latency(0.5) * 1000,
            "latency_p99_ms": self.latency(0.99) * 1000,
            "errors": self.errors,
        }


def _progress_bar(total: int, out: TextIO) -> Any:
    """A tqdm bar of answered requests (refreshing live on a terminal, every 10 s in a log)."""
    return progress_bar(
        out, total=total, unit="req", desc="requests", mininterval=0.1 if is_terminal(out) else 10.0
    )


async def run_workload(
    url: str,
    model: str | None,
    workload: Workload,
    *,
    request_rate: float = float("inf"),
    max_concurrency: int | None = None,
    api_key: str | None = None,
    path: str = "/v2/rerank",
    request_timeout: float = 600.0,
    seed: int = 0,
    progress: TextIO | None = sys.stderr,
    token_counts: Sequence[int] | None = None,
) -> BenchResult:
    """Send every request of `workload` (Poisson arrivals at `request_rate`, or all at once for inf).

    Input tokens come from the answer's Cohere `meta`, or from `token_counts` (one per request, counted
    beforehand) for servers whose answers do not count tokens.
    """
    result = BenchResult(len(workload.requests), workload.documents)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limit = asyncio.Semaphore(max_concurrency or len(workload.requests) or 1)
    rng = random.Random(seed)
    bar = _progress_bar(len(workload.requests), progress) if progress is not None else None
    limits = httpx.Limits(max_connections=max_concurrency or len(workload.requests) or 1)

    async with httpx.AsyncClient(
        base_url=url, timeout=request_timeout, headers=headers, limits=limits
    ) as client:

        async def one(index: int, query: str, documents: list[str]) -> None:
            body: dict[str, Any] = {"query": query, "documents": documents}
            if model:
                body["model"] = model
            async with limit:
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    result.errors[key] = result.errors.get(key, 0) + 1
                else:
                    if response.status_code == 200:
                        result.latencies.append(time.perf_counter() - started)
                        result.succeeded += 1
                        result.input_tokens += (
                            token_counts[index]
                            if token_counts is not None
                            else int(response.json()["meta"]["tokens"]["input_tokens"])
                        )
                    else:
                        key = str(response.status_code)
                        result.errors[key] = result.errors.get(key, 0) + 1
            if bar is not None:
                bar.update(1)

        started = time.perf_counter()
        tasks = []
        for index, (query, documents) in enumerate(workload.requests):
            tasks.append(asyncio.create_task(one(index, query, documents)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        try:
            await asyncio.gather(*tasks)
        finally:
            if bar is not None:
                bar.close()
        result.duration = time.perf_counter() - started
    return result
