"""Dynamic batching of rows from concurrent requests under a padded-token budget, grouped by length.

Rows wait in length buckets. Whenever an OpenVINO infer request is idle, the dispatcher takes the bucket
holding the oldest row (so nothing starves), fills a batch from it and then from the neighbouring buckets
while the padded size (rows x longest row) stays within the budget. Grouping by length keeps padding, which
is pure wasted compute, small. The queue is bounded: when it is full new work is refused with a retry hint
instead of letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rerank_runtime.engine.chunking import Row, RowBatch, pad_rows
from rerank_runtime.engine.errors import OverloadedError
from rerank_runtime.engine.inference import BatchDone, Logits

# How many neighbouring buckets on each side may join a batch that still has room.
_NEIGHBOUR_BUCKETS = 2


class BatchRunner(Protocol):
    """What the batcher needs from an inference backend."""

    capacity: int

    def start(self, batch: RowBatch, done: BatchDone) -> None:
        """Start one batch; `done` is called from another thread."""


@dataclass
class _Submission:
    future: asyncio.Future[Logits]
    logits: Logits
    remaining: int


@dataclass
class _QueuedRow:
    seq: int
    row: Row
    owner: _Submission
    index: int


@dataclass
class BatchStats:
    """Counters the batcher keeps for metrics and retry hints."""

    batches: int = 0
    rows: int = 0
    padded_tokens: int = 0
    tokens_per_second: float = 0.0
    _started: dict[int, float] = field(default_factory=dict)


class Batcher:
    """Collects rows from many requests and runs them as padded batches on an async inference backend."""

    def __init__(
        self,
        runner: BatchRunner,
        *,
        pad_token_id: int,
        bert_segments: bool,
        num_labels: int,
        max_batch_tokens: int,
        max_queue_rows: int,
        bucket_width: int = 32,
        on_batch: Callable[[int, int], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._runner = runner
        self._pad_token_id = pad_token_id
        self._bert_segments = bert_segments
        self._num_labels = num_labels
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_rows = max_queue_rows
        self._bucket_width = bucket_width
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self._buckets: dict[int, deque[_QueuedRow]] = {}
        self._queued = 0
        self._queued_tokens = 0
        self._seq = itertools.count()
        self._batch_ids = itertools.count()
        self._in_flight = 0
        self.stats = BatchStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_rows(self) -> int:
        """Rows waiting for an infer request."""
        return self._queued

    def start(self) -> None:
        """Start the dispatcher on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self._runner.capacity)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = self._loop.create_task(self._dispatch_forever(), name="batcher-dispatch")

    async def close(self) -> None:
        """Stop dispatching and wait for batches already running on the backend."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._idle is not None:
            await self._idle.wait()

    def retry_after(self) -> float:
        """Seconds the current queue needs to drain at the measured speed (at least one)."""
        rate = self.stats.tokens_per_second
        if rate <= 0:
            return 1.0
        return float(max(1, math.ceil(self._queued_tokens / rate)))

    async def score(self, rows: list[Row]) -> Logits:
        """Logits (rows x labels) for `rows`, computed in batches shared with other callers."""
        if self._loop is None or self._wakeup is None:
            raise RuntimeError("Batcher.start() was not called")
        # An empty queue takes any request, so a request larger than the bound can still be served alone.
        if self._queued and self._queued + len(rows) > self.max_queue_rows:
            raise OverloadedError(
                f"server is busy: {self._queued} rows are queued (limit {self.max_queue_rows})",
                retry_after=self.retry_after(),
            )
        future: asyncio.Future[Logits] = self._loop.create_future()
        owner = _Submission(future, np.zeros((len(rows), self._num_labels), dtype=np.float32), len(rows))
        if not rows:
            return owner.logits
        for index, row in enumerate(rows):
            key = (len(row) + self._bucket_width - 1) // self._bucket_width
            self._buckets.setdefault(key, deque()).append(_QueuedRow(next(self._seq), row, owner, index))
            self._queued_tokens += len(row)
        self._set_depth(self._queued + len(rows))
        self._wakeup.set()
        return await future

    def _set_depth(self, depth: int) -> None:
        self._queued = depth
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)

    def _pop_live(self, key: int) -> _QueuedRow | None:
        """Head of a bucket, skipping rows whose caller went away."""
        bucket = self._buckets.get(key)
        while bucket:
            head = bucket[0]
            if not head.owner.future.done():
                return head
            bucket.popleft()
            self._queued_tokens -= len(head.row)
            self._set_depth(self._queued - 1)
        self._buckets.pop(key, None)
        return None

    def _take_batch(self) -> list[_QueuedRow]:
        heads = {key: head for key in list(self._buckets) if (head := self._pop_live(key)) is not None}
        if not heads:
            return []
        oldest = min(heads, key=lambda key: heads[key].seq)
        order = [oldest]
        for distance in range(1, _NEIGHBOUR_BUCKETS + 1):
            order += [oldest - distance, oldest + distance]
        batch: list[_QueuedRow] = []
        width = 0
        for key in order:
            while (head := self._pop_live(key)) is not None:
                new_width = max(width, len(head.row))
                if batch and (len(batch) + 1) * new_width > self.max_batch_tokens:
                    break
                self._buckets[key].popleft()
                batch.append(head)
                width = new_width
                self._queued_tokens -= len(head.row)
            if batch and (len(batch) + 1) * width > self.max_batch_tokens:
                break
        self._set_depth(self._queued - len(batch))
        return batch

    async def _dispatch_forever(self) -> None:
        assert self._slots is not None and self._wakeup is not None and self._idle is not None
        while True:
            await self._slots.acquire()
            batch: list[_QueuedRow] = []
            while not batch:
                batch = self._take_batch()
                if not batch:
                    self._wakeup.clear()
                    await self._wakeup.wait()
            padded = pad_rows([item.row for item in batch], self._pad_token_id, self._bert_segments)
            batch_id = next(self._batch_ids)
            self.stats._started[batch_id] = time.perf_counter()
            self._in_flight += 1
            self._idle.clear()
            try:
                self._runner.start(padded, self._threadsafe_done(batch_id, batch, padded.padded_tokens))
            except Exception as exc:
                self._complete(batch_id, batch, padded.padded_tokens, None, exc)

    def _threadsafe_done(self, batch_id: int, batch: list[_QueuedRow], padded_tokens: int) -> BatchDone:
        loop = self._loop
        assert loop is not None

        def done(logits: Logits | None, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this batch anymore
                loop.call_soon_threadsafe(self._complete, batch_id, batch, padded_tokens, logits, error)

        return done

    def _complete(
        self,
        batch_id: int,
        batch: list[_QueuedRow],
        padded_tokens: int,
        logits: Logits | None,
        error: BaseException | None,
    ) -> None:
        assert self._slots is not None and self._idle is not None
        self._slots.release()
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        started = self.stats._started.pop(batch_id, None)
        if started is not None and logits is not None:
            elapsed = max(time.perf_counter() - started, 1e-6)
            # Several batches run at once, so one batch's rate times the pool size approximates the total.
            rate = padded_tokens / elapsed * self._runner.capacity
            self.stats.tokens_per_second = (
                rate if self.stats.tokens_per_second == 0 else 0.8 * self.stats.tokens_per_second + 0.2 * rate
            )
        self.stats.batches += 1
        self.stats.rows += len(batch)
        self.stats.padded_tokens += padded_tokens
        if self._on_batch is not None:
            self._on_batch(len(batch), padded_tokens)
        for position, item in enumerate(batch):
            owner = item.owner
            if owner.future.done():
                continue
            if logits is None:
                owner.future.set_exception(error or RuntimeError("inference failed"))
                continue
            owner.logits[item.index] = logits[position]
            owner.remaining -= 1
            if owner.remaining == 0:
                owner.future.set_result(owner.logits)
