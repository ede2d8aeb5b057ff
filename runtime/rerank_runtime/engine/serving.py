"""The rerank use case: pick the model, tokenize off the event loop, score through the batcher, rank."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rerank_runtime.engine.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
)
from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.engine.versions import EngineOptions, ServedModel, VersionWatcher
from rerank_runtime.repository import ModelRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankQuery:
    """A validated rerank request, independent of the wire format it came in."""

    model: str | None
    query: str
    documents: list[str]
    top_n: int | None = None
    max_chunks_per_doc: int | None = None
    max_tokens_per_doc: int | None = None
    raw_scores: bool = False
    # `time.monotonic()` by which the answer is due: work expected to miss it is refused (429), work still
    # queued when it passes fails (429). None: no deadline. `strict_deadline`: the client set it, so it holds
    # even for a request that would have the model to itself.
    deadline: float | None = None
    strict_deadline: bool = False


@dataclass(frozen=True)
class ScoredDocument:
    """One document's position in the request and its score."""

    index: int
    score: float


@dataclass(frozen=True)
class RerankOutcome:
    """Ranked documents and the facts the response reports."""

    model: str
    version: int
    ranking: list[ScoredDocument]
    input_tokens: int
    chunks: int


def sigmoid(log_odds: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float64."""
    wide = log_odds.astype(np.float64)
    return np.exp(-np.logaddexp(0.0, -wide))


def _token_lower_bound(request: RerankQuery) -> int:
    """Fewest tokens the request can turn into (no text yields less than one token per 8 characters)."""
    cap = request.max_tokens_per_doc
    return sum(min(len(doc) // 8, cap) if cap is not None else len(doc) // 8 for doc in request.documents)


class RerankService:
    """Serves every model of one repository: lookup, readiness, reranking and graceful shutdown."""

    def __init__(
        self,
        repository: ModelRepository,
        options: EngineOptions,
        *,
        names: list[str] | None = None,
        poll_interval: float = 5.0,
        tokenizer_threads: int = 2,
        max_inflight_requests: int = 512,
        metrics: RuntimeMetrics | None = None,
        inline_tokenize_chars: int = 2000,
    ) -> None:
        self.repository = repository
        self.options = options
        self.names = list(names or [])
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {name: ServedModel(name, metrics) for name in self.names}
        if metrics is not None:
            for name in self.names:
                metrics.served_version.labels(name).set(0)
        self.max_inflight_requests = max_inflight_requests
        self.inline_tokenize_chars = inline_tokenize_chars
        self.watcher = VersionWatcher(
            repository,
            self.models,
            options=options,
            names=self.names or None,
            poll_interval=poll_interval,
            metrics=metrics,
        )
        self._executor = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="tokenize")
        self._inflight = 0
        self._drained = asyncio.Event()
        self._draining = False
        self._stopping = False
        self._watch_task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching the repository; models load in the background and become ready when warm."""
        self._watch_task = asyncio.get_running_loop().create_task(self.watcher.run(), name="version-watcher")

    def begin_drain(self) -> None:
        """Readiness goes false; requests keep being served.

        Endpoints and kube-proxy rules drop a not-ready pod only after a moment, and requests still routed
        here meanwhile must not fail: new ones are refused only once :meth:`shutdown` starts (after the
        server's shutdown delay, when it also stops accepting connections)."""
        if not self._draining:
            logger.info("draining: readiness is now false")
        self._draining = True

    async def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Stop watching, wait for in-flight requests (bounded), release every model."""
        self.begin_drain()
        self._stopping = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
        for model in self.models.values():
            await model.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- queries ------------------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """True once shutdown began."""
        return self._draining

    def is_ready(self) -> bool:
        """Every served model has a warmed version and the server is not shutting down."""
        return not self._draining and bool(self.models) and all(m.current for m in self.models.values())

    def model_ready(self, name: str) -> bool:
        """The named model can serve requests (raises ModelNotFoundError for an unknown name)."""
        return not self._draining and self.get_model(name).current is not None

    def get_model(self, name: str) -> ServedModel:
        """The served model called `name`."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"model {name!r} is not served here; served: {sorted(self.models)}")
        return model

    def select_model(self, name: str | None) -> ServedModel:
        """The model a request names, or the only one served when it names none."""
        if name is not None:
            return self.get_model(name)
        if len(self.models) == 1:
            return next(iter(self.models.values()))
        if not self.models:
            raise ModelNotReadyError("no model is served yet", retry_after=2.0)
        raise InvalidRequestError(f"'model' is required: this server serves {sorted(self.models)}")

    # -- the use case -------------------------------------------------------------------------------

    async def rerank(self, request: RerankQuery) -> RerankOutcome:
        """Score every document against the query and rank them (best first, cut to top_n)."""
        if self._stopping:
            raise ModelNotReadyError("server is shutting down", retry_after=1.0)
        model = self.select_model(request.model)
        if self._inflight >= self.max_inflight_requests:
            if self.metrics is not None:
                self.metrics.rejected.labels(model.name, "inflight").inc()
            raise OverloadedError(f"server is busy: {self._inflight} requests in progress", retry_after=1.0)
        self._inflight += 1
        self._drained.clear()
        try:
            async with model.lease() as version:
                try:
                    # Refuse before tokenizing when even a lower bound of the work cannot make it.
                    if version.batcher is not None:
                        version.batcher.admit(
                            len(request.documents),
                            _token_lower_bound(request),
                            request.deadline,
                            request.strict_deadline,
                        )
                    arguments = (
                        request.query,
                        request.documents,
                        request.max_chunks_per_doc,
                        request.max_tokens_per_doc,
                    )
                    if len(request.query) + sum(map(len, request.documents)) <= self.inline_tokenize_chars:
                        # A few short texts: tokenizing costs about as little as handing them to a thread.
                        prepared = version.build_rows(*arguments)
                    else:
                        loop = asyncio.get_running_loop()
                        prepared = await loop.run_in_executor(self._executor, version.build_rows, *arguments)
                    logits = await version.score(prepared.rows, request.deadline, request.strict_deadline)
                except (OverloadedError, DeadlineExceededError) as exc:
                    if self.metrics is not None:
                        reason = exc.reason if isinstance(exc, OverloadedError) else "deadline"
                        self.metrics.rejected.labels(model.name, reason).inc()
                    raise
                row_scores = version.log_odds(logits)
                best = np.full(len(request.documents), -np.inf, dtype=np.float64)
                np.maximum.at(best, prepared.document_of_row, row_scores)
                scores = best if request.raw_scores else sigmoid(best)
                number = version.number
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._drained.set()
        # Stable sort on the negated score keeps equal scores in input order.
        order = np.argsort(-scores, kind="stable")
        if request.top_n is not None:
            order = order[: request.top_n]
        if self.metrics is not None:
            self.metrics.documents.labels(model.name).inc(len(request.documents))
            self.metrics.input_tokens.labels(model.name).inc(prepared.input_tokens)
        return RerankOutcome(
            model=model.name,
            version=number,
            ranking=[ScoredDocument(int(i), float(scores[i])) for i in order],
            input_tokens=prepared.input_tokens,
            chunks=len(prepared.rows),
        )
