"""Dynamic batching of rows from concurrent requests under a padded-token budget, grouped by length, with
time-based admission, fair sharing between requests and cancellation.

- **Batches.** Rows wait in length buckets. Whenever an OpenVINO infer request is idle, the dispatcher takes
  the bucket whose head comes first in the fair order below, fills a batch from it and then from the
  neighbouring buckets while the padded size (rows x longest row) stays within the budget. Grouping by
  length keeps padding, which is pure wasted compute, small.
- **Fairness (start-time fair queueing by tokens).** Each row carries a tag: the virtual time when its
  request arrived plus the tokens of that request's earlier rows; batches are seeded with the smallest tag.
  Requests therefore share the model like processor sharing: a 1-row request that arrives behind a
  1000-row request joins one of the next batches instead of waiting for all 1000 rows, and two large
  requests progress side by side. Work is never left idle to enforce this (the batch fills up).
- **Admission by time.** From the measured throughput (tokens/s of the loaded version, seeded by its
  warm-up) the batcher estimates when a new request would complete under that fair order: the tokens ahead
  of its last row are, for every waiting request, the smaller of its queued tokens and the new request's
  tokens. A request whose estimate passes its deadline is refused at once (`OverloadedError`, 429) with a
  retry hint derived from the estimate. An empty queue takes any request that is not `strict` (one larger
  than the server's budget can still be served alone; a client's own deadline is always kept). A row
  bound stays as a memory bound.
- **Deadlines and cancellation.** A request whose deadline passes while it still has queued rows fails
  with `DeadlineExceededError` (429). A request whose caller goes away (its future is cancelled) or fails
  leaves the queue at once; its rows already in a running batch are dropped when the batch returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rerank_runtime.engine.chunking import Row, RowBatch, pad_rows
from rerank_runtime.engine.errors import DeadlineExceededError, OverloadedError
from rerank_runtime.engine.inference import BatchDone, Logits

# How many neighbouring buckets on each side may join a batch that still has room.
_NEIGHBOUR_BUCKETS = 2
# Weight of the past in the throughput estimate, per batch.
_RATE_DECAY = 0.9


class BatchRunner(Protocol):
    """What the batcher needs from an inference backend."""

    capacity: int

    def start(self, batch: RowBatch, done: BatchDone) -> None:
        """Start one batch; `done` is called from another thread."""


@dataclass(eq=False)
class _Submission:
    future: asyncio.Future[Logits]
    logits: Logits
    remaining: int
    queued: int = 0
    queued_tokens: int = 0
    withdrawn: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass
class _QueuedRow:
    row: Row
    owner: _Submission
    index: int


# Heap entries: (fair tag, arrival sequence, row); tuples compare fast and the sequence breaks ties.
_Entry = tuple[int, int, _QueuedRow]
# Withdrawn rows stay in the heaps as tombstones (removing them one by one would cost O(n) per request)
# until they reach a heap's head, or until there are more of them than this and than live rows.
_COMPACT_AFTER = 1024


@dataclass
class BatchStats:
    """Counters the batcher keeps for metrics and estimates."""

    batches: int = 0
    rows: int = 0
    padded_tokens: int = 0
    cancelled_rows: int = 0
    tokens_per_second: float = 0.0


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
        initial_tokens_per_second: float = 0.0,
        on_batch: Callable[[int, int, float], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        on_cancelled: Callable[[str, int], None] | None = None,
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
        self._on_cancelled = on_cancelled
        self._buckets: dict[int, list[_Entry]] = {}
        self._tombstones = 0
        self._waiting: dict[_Submission, None] = {}
        self._queued = 0
        self._queued_tokens = 0
        self._running_tokens = 0
        self._virtual_time = 0
        self._seq = itertools.count()
        self._batch_ids = itertools.count()
        self._in_flight = 0
        self._started: dict[int, float] = {}
        # Throughput as decayed sums of tokens and busy seconds (per infer request).
        self._rate_tokens = initial_tokens_per_second
        self._rate_seconds = 1.0 if initial_tokens_per_second > 0 else 0.0
        self.stats = BatchStats(tokens_per_second=initial_tokens_per_second)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_rows(self) -> int:
        """Rows waiting for an infer request."""
        return self._queued

    @property
    def idle(self) -> bool:
        """No row is queued and no batch is running."""
        return self._queued == 0 and self._in_flight == 0

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

    # -- estimates ------------------------------------------------------------------------------------

    def _seconds(self, tokens: float) -> float:
        rate = self.stats.tokens_per_second
        return tokens / rate if rate > 0 else 0.0

    def expected_seconds(self, tokens: int) -> float:
        """Estimated seconds until a new request of `tokens` tokens would be scored, under the fair order."""
        ahead = sum(min(owner.queued_tokens, tokens) for owner in self._waiting)
        return self._seconds(ahead + tokens + self._running_tokens / max(1, self._runner.capacity))

    def retry_after(self) -> float:
        """Seconds the current queue needs to drain at the measured speed (at least one)."""
        return float(max(1, math.ceil(self._seconds(self._queued_tokens + self._running_tokens))))

    def admit(self, rows: int, tokens: int, deadline: float | None, strict: bool = False) -> float | None:
        """Refuse (OverloadedError) work that would not fit; return the deadline the work is held to."""
        if not self._queued and not strict:
            if deadline is None:
                return None
            # An empty queue takes any request; one larger than the budget gets the time it needs.
            return max(deadline, time.monotonic() + 2 * self.expected_seconds(tokens))
        if self._queued and self._queued + rows > self.max_queue_rows:
            raise OverloadedError(
                f"server is busy: {self._queued} rows are queued (limit {self.max_queue_rows})",
                retry_after=self.retry_after(),
                reason="queue",
            )
        if deadline is None:
            return None
        expected = self.expected_seconds(tokens)
        left = deadline - time.monotonic()
        if expected > left:
            raise OverloadedError(
                f"server is busy: this request would take about {expected:.1f} s, its budget is "
                f"{max(left, 0):.1f} s",
                retry_after=expected - max(left, 0),
                reason="budget",
            )
        return deadline

    # -- scoring --------------------------------------------------------------------------------------

    async def score(self, rows: list[Row], deadline: float | None = None, strict: bool = False) -> Logits:
        """Logits (rows x labels) for `rows`, computed in batches shared with other callers.

        Raises OverloadedError when the request cannot be admitted and DeadlineExceededError when its
        deadline (a `time.monotonic()` value) passes while rows are still queued. Cancelling the caller
        withdraws the rows that are still queued. `strict`: the deadline is the client's own, so even an
        empty queue does not take work expected to miss it.
        """
        if self._loop is None or self._wakeup is None:
            raise RuntimeError("Batcher.start() was not called")
        tokens = sum(len(row) for row in rows)
        deadline = self.admit(len(rows), tokens, deadline, strict)
        future: asyncio.Future[Logits] = self._loop.create_future()
        owner = _Submission(future, np.zeros((len(rows), self._num_labels), dtype=np.float32), len(rows))
        if not rows:
            return owner.logits
        tag = self._virtual_time
        for index, row in enumerate(rows):
            key = (len(row) + self._bucket_width - 1) // self._bucket_width
            entry = (tag, next(self._seq), _QueuedRow(row, owner, index))
            heapq.heappush(self._buckets.setdefault(key, []), entry)
            tag += len(row)
        owner.queued, owner.queued_tokens = len(rows), tokens
        self._waiting[owner] = None
        self._queued_tokens += tokens
        self._set_depth(self._queued + len(rows))
        future.add_done_callback(lambda _: self._withdraw(owner))
        if deadline is not None:
            owner.timer = self._loop.call_at(deadline, self._expire, owner)
        self._wakeup.set()
        return await future

    def _expire(self, owner: _Submission) -> None:
        if owner.queued and not owner.future.done():
            owner.future.set_exception(
                DeadlineExceededError(
                    f"deadline passed with {owner.queued} of {len(owner.logits)} rows still queued",
                    retry_after=self.retry_after(),
                )
            )

    def _withdraw(self, owner: _Submission) -> None:
        """Take the rows of a finished, failed or cancelled request out of the queue (O(1): tombstones)."""
        if owner.timer is not None:
            owner.timer.cancel()
        self._waiting.pop(owner, None)
        if owner.withdrawn or not owner.queued:
            return
        owner.withdrawn = True
        self._tombstones += owner.queued
        self._count_cancelled("queued", owner.queued)
        self._queued_tokens -= owner.queued_tokens
        self._set_depth(self._queued - owner.queued)
        owner.queued = owner.queued_tokens = 0
        if self._tombstones > max(_COMPACT_AFTER, self._queued):
            self._compact()

    def _compact(self) -> None:
        for key in list(self._buckets):
            live = [entry for entry in self._buckets[key] if not entry[2].owner.withdrawn]
            if live:
                heapq.heapify(live)
                self._buckets[key] = live
            else:
                del self._buckets[key]
        self._tombstones = 0

    def _head(self, key: int) -> _Entry | None:
        """The first live entry of a bucket, dropping tombstones (and rows of requests that just ended)."""
        bucket = self._buckets.get(key)
        while bucket:
            entry = bucket[0]
            owner = entry[2].owner
            if owner.future.done() and not owner.withdrawn:
                self._withdraw(owner)  # ended a moment ago; its done-callback has not run yet
                bucket = self._buckets.get(key)
                continue
            if not owner.withdrawn:
                return entry
            heapq.heappop(bucket)
            self._tombstones -= 1
        self._buckets.pop(key, None)
        return None

    def _count_cancelled(self, stage: str, rows: int) -> None:
        self.stats.cancelled_rows += rows
        if self._on_cancelled is not None and rows:
            self._on_cancelled(stage, rows)

    def _set_depth(self, depth: int) -> None:
        self._queued = depth
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)

    def _take(self, key: int) -> _QueuedRow:
        tag, _, item = heapq.heappop(self._buckets[key])
        if not self._buckets[key]:
            del self._buckets[key]
        owner = item.owner
        owner.queued -= 1
        owner.queued_tokens -= len(item.row)
        if not owner.queued:
            self._waiting.pop(owner, None)
        self._queued_tokens -= len(item.row)
        self._virtual_time = max(self._virtual_time, tag)
        return item

    def _take_batch(self) -> list[_QueuedRow]:
        heads = {key: head for key in list(self._buckets) if (head := self._head(key)) is not None}
        if not heads:
            return []
        seed = min(heads, key=heads.__getitem__)
        order = [seed]
        for distance in range(1, _NEIGHBOUR_BUCKETS + 1):
            order += [seed - distance, seed + distance]
        batch: list[_QueuedRow] = []
        width = 0
        for key in order:
            while (head := self._head(key)) is not None:
                new_width = max(width, len(head[2].row))
                if batch and (len(batch) + 1) * new_width > self.max_batch_tokens:
                    break
                batch.append(self._take(key))
                width = new_width
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
            tokens = sum(len(item.row) for item in batch)
            batch_id = next(self._batch_ids)
            self._started[batch_id] = time.perf_counter()
            self._in_flight += 1
            self._running_tokens += tokens
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

    def _record_rate(self, tokens: int, elapsed: float) -> None:
        # Several batches run at once, so one batch's time divided by the pool size approximates its share.
        self._rate_tokens = _RATE_DECAY * self._rate_tokens + tokens
        self._rate_seconds = _RATE_DECAY * self._rate_seconds + elapsed / max(1, self._runner.capacity)
        self.stats.tokens_per_second = self._rate_tokens / max(self._rate_seconds, 1e-9)

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
        tokens = sum(len(item.row) for item in batch)
        self._running_tokens -= tokens
        started = self._started.pop(batch_id, None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        if started is not None and logits is not None:
            self._record_rate(tokens, max(elapsed, 1e-6))
        self.stats.batches += 1
        self.stats.rows += len(batch)
        self.stats.padded_tokens += padded_tokens
        if self._on_batch is not None:
            self._on_batch(len(batch), padded_tokens, elapsed)
        dropped = 0
        for position, item in enumerate(batch):
            owner = item.owner
            if owner.future.done():
                dropped += 1  # its caller left or failed meanwhile: the result is simply not used
                continue
            if logits is None:
                owner.future.set_exception(error or RuntimeError("inference failed"))
                continue
            owner.logits[item.index] = logits[position]
            owner.remaining -= 1
            if owner.remaining == 0:
                owner.future.set_result(owner.logits)
        self._count_cancelled("running", dropped)
