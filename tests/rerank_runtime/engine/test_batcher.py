"""Dynamic batching on the real model: concurrent requests share batches; results do not depend on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from rerank_runtime.engine.errors import OverloadedError
from rerank_runtime.engine.versions import EngineOptions, LoadedVersion
from rerank_runtime.repository import ModelRepository

QUERY = "what is the capital of france"
WORDS = [
    "paris",
    "france",
    "capital",
    "city",
    "river",
    "seine",
    "museum",
    "tower",
    "art",
    "history",
    "people",
    "food",
    "wine",
]


def _documents(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 120)))) for _ in range(count)]


@pytest.fixture(scope="module")
def loaded(minilm_repository: tuple[Path, str]) -> LoadedVersion:
    """Version 1 of the MiniLM export, compiled in f32 with a small batch budget, without the latency path
    (a small request on an idle engine would skip the batcher these tests are about)."""
    root, name = minilm_repository
    options = EngineOptions(precision="f32", max_batch_tokens=1024, max_queue_rows=64, latency_max_tokens=0)
    return LoadedVersion(ModelRepository(root).get(name, 1), options)


async def test_concurrent_requests_share_batches_within_the_budget(loaded: LoadedVersion) -> None:
    """Rows of many requests are batched together, never over the padded-token budget, with equal results."""
    batches: list[tuple[int, int]] = []
    loaded.activate(None)
    assert loaded.batcher is not None
    loaded.batcher._on_batch = lambda rows, tokens, _seconds: batches.append((rows, tokens))
    requests = [_documents(6, seed) for seed in range(8)]
    row_sets = [loaded.build_rows(QUERY, docs, None, None).rows for docs in requests]
    try:
        together = await asyncio.gather(*(loaded.score(rows) for rows in row_sets))
        shared = len(batches)
        alone = [await loaded.score(rows) for rows in row_sets]
    finally:
        await loaded.batcher.close()
        loaded.batcher = None
    total_rows = sum(len(rows) for rows in row_sets)
    assert shared < len(requests), f"{len(requests)} requests ran in {shared} batches: nothing was shared"
    assert sum(rows for rows, _ in batches[:shared]) == total_rows
    assert all(tokens <= 1024 for _, tokens in batches)
    for concurrent, sequential in zip(together, alone, strict=True):
        np.testing.assert_allclose(concurrent, sequential, atol=1e-5)


async def test_full_queue_refuses_with_retry_hint(loaded: LoadedVersion) -> None:
    """Beyond `max_queue_rows` waiting rows new work is refused at once (429 upstream) with Retry-After."""
    loaded.activate(None)
    assert loaded.batcher is not None
    rows = loaded.build_rows(QUERY, _documents(40, 99), None, None).rows
    try:
        first = asyncio.ensure_future(loaded.score(rows * 3))  # 120 rows: accepted because the queue is empty
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError) as refused:
            await loaded.score(rows)
        assert refused.value.retry_after >= 1
        assert (await first).shape == (120, 1)
        # Once drained, the same request is accepted again.
        assert (await loaded.score(rows)).shape == (40, 1)
    finally:
        await loaded.batcher.close()
        loaded.batcher = None
