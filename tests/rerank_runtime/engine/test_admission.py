"""Admission by expected time, fair sharing, deadlines and cancellation in the batcher, on the real model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from rerank_runtime.engine.batcher import Batcher
from rerank_runtime.engine.chunking import Row
from rerank_runtime.engine.errors import DeadlineExceededError, OverloadedError
from rerank_runtime.engine.versions import EngineOptions, LoadedVersion
from rerank_runtime.repository import ModelRepository

QUERY = "what is the capital of france"
WORDS = ["paris", "france", "capital", "city", "river", "seine", "museum", "tower", "art", "history"]


def _rows(loaded: LoadedVersion, count: int, words: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    documents = [" ".join(rng.choice(WORDS, size=words)) for _ in range(count)]
    return loaded.build_rows(QUERY, documents, None, None).rows


@pytest.fixture(scope="module")
def loaded(minilm_repository: tuple[Path, str]) -> LoadedVersion:
    """Version 1 of the MiniLM export in f32 with small batches (many batches per large request)."""
    root, name = minilm_repository
    options = EngineOptions(precision="f32", max_batch_tokens=1024, max_queue_rows=100_000)
    return LoadedVersion(ModelRepository(root).get(name, 1), options)


@pytest.fixture
async def batcher(loaded: LoadedVersion) -> AsyncIterator[Batcher]:
    """A started batcher recording (rows, seconds) of every batch in `batcher.log`."""
    cancelled: dict[str, int] = {"queued": 0, "running": 0}
    loaded.activate(None)
    assert loaded.batcher is not None
    batcher = loaded.batcher
    batcher._on_cancelled = lambda stage, rows: cancelled.__setitem__(stage, cancelled[stage] + rows)
    batcher.cancelled = cancelled  # type: ignore[attr-defined]
    try:
        yield batcher
    finally:
        await batcher.close()
        loaded.batcher = None


async def _until(condition: object, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_small_request_is_not_starved_by_large_ones(loaded: LoadedVersion, batcher: Batcher) -> None:
    """Fair order: a 1-row request behind two 150-row requests is scored while they still have most rows
    queued, and the two large requests progress side by side (neither waits for the other to finish)."""
    rows_a, rows_b, small = _rows(loaded, 150, 40, 1), _rows(loaded, 150, 40, 2), _rows(loaded, 1, 8, 3)
    rows_per_batch = 1024 // max(len(row) for row in rows_a + rows_b)
    big_a = asyncio.ensure_future(batcher.score(rows_a))
    await _until(lambda: batcher.stats.batches >= 1)
    big_b = asyncio.ensure_future(batcher.score(rows_b))
    await asyncio.sleep(0)
    rows_before = batcher.stats.rows
    await batcher.score(small)
    rows_scored_meanwhile = batcher.stats.rows - rows_before
    queued_when_small_done = batcher.queued_rows
    assert not big_a.done() and not big_b.done()
    # It waited for the batches already running, one round of rows with equal tags and its own batch
    # (FIFO would have made it wait for all 300 rows).
    assert rows_scored_meanwhile <= rows_per_batch * (loaded.runner.capacity + 3), rows_scored_meanwhile
    assert queued_when_small_done > 150, queued_when_small_done
    await asyncio.wait({big_a, big_b}, return_when=asyncio.FIRST_COMPLETED)
    # Processor sharing: when the first large request ends, the other is nearly done too.
    assert batcher.queued_rows < 60, batcher.queued_rows
    await asyncio.gather(big_a, big_b)


async def test_admission_refuses_by_expected_time_with_retry_after(
    loaded: LoadedVersion, batcher: Batcher
) -> None:
    """With a queue that needs seconds, a large request with a short budget is refused at once with a
    Retry-After from the estimate, while a small one with the same budget is admitted (fair estimate)."""
    backlog = asyncio.ensure_future(batcher.score(_rows(loaded, 200, 40, 4)))
    await _until(lambda: batcher.stats.batches >= 2)
    rate = batcher.stats.tokens_per_second
    assert rate > 0
    large = _rows(loaded, 100, 40, 5)
    large_seconds = sum(len(r) for r in large) / rate
    budget = large_seconds * 0.5  # the large request alone needs twice this
    started = time.monotonic()
    with pytest.raises(OverloadedError) as refused:
        await batcher.score(large, deadline=time.monotonic() + budget)
    assert time.monotonic() - started < 0.05, "the refusal was not immediate"
    assert refused.value.reason == "budget"
    assert refused.value.retry_after >= large_seconds - budget
    small = _rows(loaded, 1, 8, 6)
    assert (await batcher.score(small, deadline=time.monotonic() + budget)).shape == (1, 1)
    await backlog
    assert batcher.cancelled == {"queued": 0, "running": 0}  # type: ignore[attr-defined]


async def test_cancelled_request_leaves_the_queue_at_once(loaded: LoadedVersion, batcher: Batcher) -> None:
    """A caller that goes away: its queued rows are withdrawn before scoring; only running batches finish."""
    rows = _rows(loaded, 200, 40, 7)
    task = asyncio.ensure_future(batcher.score(rows))
    await _until(lambda: batcher.stats.batches >= 1)
    task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert batcher.queued_rows == 0
    queued_cancelled = batcher.cancelled["queued"]  # type: ignore[attr-defined]
    await _until(lambda: batcher._in_flight == 0)
    scored = batcher.stats.rows
    # Scored: the first batch plus whatever was running when the caller left (one batch per infer request).
    rows_per_batch = 1024 // max(len(r) for r in rows)
    assert scored <= rows_per_batch * (1 + loaded.runner.capacity), scored
    assert queued_cancelled + scored == len(rows)


async def test_deadline_passed_in_queue_fails_the_request_and_frees_its_rows(
    loaded: LoadedVersion, batcher: Batcher
) -> None:
    """When the estimate was wrong (here: forced optimistic), a request still queued at its deadline gets
    DeadlineExceededError and its rows leave the queue."""
    backlog = asyncio.ensure_future(batcher.score(_rows(loaded, 150, 40, 8)))
    await _until(lambda: batcher.stats.batches >= 1)
    batcher.stats.tokens_per_second *= 1000  # pretend the model is 1000x faster than it is
    late = _rows(loaded, 100, 40, 9)
    with pytest.raises(DeadlineExceededError) as expired:
        await batcher.score(late, deadline=time.monotonic() + 0.3)
    assert expired.value.retry_after >= 1
    await asyncio.sleep(0)
    assert batcher.cancelled["queued"] > 0  # type: ignore[attr-defined]
    await backlog
    assert batcher.queued_rows == 0
