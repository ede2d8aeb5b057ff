"""Model versions in memory: loading, leases for in-flight requests, atomic switch, and the VersionWatcher.

A `ServedModel` holds the `LoadedVersion` that new requests use. A request takes a lease on that version for
its whole life, so switching versions is a single assignment: requests that started on the old version finish
on it, and the old version is released once its last lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import openvino as ov

from rerank_runtime.engine.batcher import Batcher
from rerank_runtime.engine.chunking import PairTemplate, Row, pad_rows
from rerank_runtime.engine.errors import ModelLoadError, ModelNotReadyError
from rerank_runtime.engine.inference import InferenceRunner, Logits, Precision
from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.engine.tokenizer import TextTokenizer
from rerank_runtime.repository import ModelRepository, ModelVersion, RepositoryError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """Engine tuning, filled from the server settings."""

    precision: Precision = "auto"
    max_batch_tokens: int = 8192
    max_queue_rows: int = 8192
    bucket_width: int = 32
    num_streams: int | None = None
    default_max_tokens_per_doc: int = 4096
    default_max_chunks_per_doc: int | None = None
    # Characters kept per document before tokenizing, per allowed token: cheap protection against megabyte
    # documents when only the first max_tokens_per_doc tokens can matter.
    chars_per_token_limit: int = 32
    # A request whose padded batch has at most this many tokens runs on the latency-compiled model when the
    # throughput model is idle (0 disables the latency path and its second compiled model).
    latency_max_tokens: int = 2048
    # OpenVINO compiled-model cache: a restart imports the compiled blobs instead of compiling again.
    cache_dir: Path | None = None


class VersionState(enum.StrEnum):
    """Life cycle of one model version inside this server."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"
    UNLOADED = "UNLOADED"


@dataclass
class VersionStatus:
    """What `/v2/models/{name}` reports for one version."""

    version: int
    state: VersionState
    error: str | None = None


@dataclass
class DocumentRows:
    """Rows built for one request: which document each row belongs to and the real token count."""

    rows: list[Row]
    document_of_row: np.ndarray
    input_tokens: int


def model_cache_dir(cache_root: Path | None, version: ModelVersion) -> Path | None:
    """The version's own folder in the compiled-model cache, named after its IR files' checksums.

    OpenVINO keys a blob on the IR's path and the compile options; a re-used path (a version number
    published again after a prune) must never import the blob of different weights. None when the cache is
    off or its folder cannot be created (the model then compiles without a cache).
    """
    if cache_root is None:
        return None
    files = version.manifest.files
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root / digest
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("model cache %s is not usable (%s): compiling without it", path, exc)
        return None
    return path


class LoadedVersion:
    """A verified, compiled and warmed model version with its tokenizer and batcher."""

    def __init__(self, version: ModelVersion, options: EngineOptions, core: ov.Core | None = None) -> None:
        self.name = version.name
        self.number = version.number
        self.manifest = version.manifest
        self.options = options
        core = core or ov.Core()
        cache_dir = model_cache_dir(options.cache_dir, version)
        self.runner = InferenceRunner(
            core,
            version.path / "model.xml",
            options.precision,
            options.num_streams,
            latency_model=options.latency_max_tokens > 0,
            cache_dir=cache_dir,
        )
        self.tokenizer = TextTokenizer(core, version.path / "text_tokenizer.xml", cache_dir)
        info = version.manifest.tokenizer
        self.template = PairTemplate(
            kind=info.kind,
            cls_token_id=info.cls_token_id,
            sep_token_id=info.sep_token_id,
            pad_token_id=info.pad_token_id,
            max_length=version.manifest.max_length,
        )
        self.batcher: Batcher | None = None
        self.warm_tokens_per_second = 0.0
        self._on_batch: Callable[[int, int, float], None] | None = None
        self.leases = 0
        self.retired = False
        self.warm_up()

    @property
    def num_labels(self) -> int:
        """Width of the logits output."""
        return self.manifest.num_labels

    def build_rows(
        self, query: str, documents: list[str], max_chunks: int | None, max_tokens: int | None
    ) -> DocumentRows:
        """Tokenize and assemble every row of a request (runs on a worker thread)."""
        max_tokens = max_tokens if max_tokens is not None else self.options.default_max_tokens_per_doc
        max_chunks = max_chunks if max_chunks is not None else self.options.default_max_chunks_per_doc
        char_limit = max_tokens * self.options.chars_per_token_limit
        texts = [query[: self.template.max_length * self.options.chars_per_token_limit]]
        texts += [doc[:char_limit] for doc in documents]
        ids = self.tokenizer.encode(texts)
        query_ids = ids[0]
        rows: list[Row] = []
        owners: list[int] = []
        tokens = 0
        for index, doc_ids in enumerate(ids[1:]):
            doc_rows = self.template.rows(query_ids, doc_ids, max_chunks=max_chunks, max_tokens=max_tokens)
            rows += doc_rows
            owners += [index] * len(doc_rows)
            tokens += sum(len(row) for row in doc_rows)
        return DocumentRows(rows, np.array(owners, dtype=np.int64), tokens)

    def log_odds(self, logits: Logits) -> npt.NDArray[np.float64]:
        """Relevance logit per row in float64: the single logit, or the positive label's log-odds."""
        wide = logits.astype(np.float64)
        if self.num_labels == 1:
            return wide[:, 0]
        positive = self.manifest.positive_label
        others = np.delete(wide, positive, axis=1)
        # softmax(l)[positive] == sigmoid(l[positive] - logsumexp(others)); for two labels l[pos] - l[neg].
        margin: npt.NDArray[np.float64] = wide[:, positive] - np.logaddexp.reduce(others, axis=1)
        return margin

    def warm_up(self) -> None:
        """Run a short and a full-length batch through every infer request (and the latency model) before
        serving, then time one more round of full-length batches on the throughput model: the first
        throughput estimate admission works with."""
        query = self.tokenizer.encode(["warm up query"])[0]
        short = self.template.rows(query, self.tokenizer.encode(["a short warm up document"])[0])
        filler = np.full(self.template.max_length, self.template.cls_token_id, dtype=np.int64)
        full = self.template.rows(query, filler, max_chunks=1)
        bert = self.template.kind == "bert"
        full_batch = pad_rows(full * 2, self.template.pad_token_id, bert)
        self.runner.warm_up([pad_rows(short, self.template.pad_token_id, bert), full_batch])
        started = time.perf_counter()
        self.runner.warm_up([full_batch], latency_model=False)
        elapsed = max(time.perf_counter() - started, 1e-6)
        self.warm_tokens_per_second = self.runner.capacity * full_batch.padded_tokens / elapsed

    def activate(self, metrics: RuntimeMetrics | None) -> None:
        """Start the batcher on the running event loop (called once the version is loaded)."""
        labels = {"model": self.name}

        def on_batch(rows: int, tokens: int, seconds: float) -> None:
            if metrics is not None:
                metrics.batch_rows.labels(**labels).observe(rows)
                metrics.batch_tokens.labels(**labels).observe(tokens)
                metrics.batch_seconds.labels(**labels).observe(seconds)
                if self.batcher is not None:
                    metrics.throughput.labels(**labels).set(self.batcher.stats.tokens_per_second)

        def on_cancelled(stage: str, rows: int) -> None:
            if metrics is not None:
                metrics.cancelled_rows.labels(self.name, stage).inc(rows)

        def on_depth(depth: int) -> None:
            if metrics is not None:
                metrics.queue_depth.labels(**labels).set(depth)

        # The gauge exists from the start: small requests on the latency path never queue a row.
        on_depth(0)
        self._on_batch = on_batch
        self.batcher = Batcher(
            self.runner,
            pad_token_id=self.template.pad_token_id,
            bert_segments=self.template.kind == "bert",
            num_labels=self.num_labels,
            max_batch_tokens=max(self.options.max_batch_tokens, self.template.max_length),
            max_queue_rows=self.options.max_queue_rows,
            bucket_width=self.options.bucket_width,
            initial_tokens_per_second=self.warm_tokens_per_second,
            on_batch=on_batch,
            on_queue_depth=on_depth,
            on_cancelled=on_cancelled,
        )
        self.batcher.start()

    async def score(self, rows: list[Row], deadline: float | None = None, strict: bool = False) -> Logits:
        """Logits for `rows`: a small request on an idle server runs on the latency model, the rest through
        the shared batcher (admission, deadline: see `Batcher.score`)."""
        if self.batcher is None:
            raise RuntimeError("version is not active")
        if rows and self.batcher.idle and self._fits_latency_path(rows):
            logits = await self._score_latency(rows)
            if logits is not None:
                return logits
        return await self.batcher.score(rows, deadline, strict)

    def _fits_latency_path(self, rows: list[Row]) -> bool:
        return len(rows) * max(len(row) for row in rows) <= self.options.latency_max_tokens

    async def _score_latency(self, rows: list[Row]) -> Logits | None:
        """Run `rows` as one batch on the latency model; None when that model is busy or absent."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Logits] = loop.create_future()

        def settle(logits: Logits | None, error: BaseException | None) -> None:
            if future.done():
                return
            if logits is None:
                future.set_exception(error or RuntimeError("inference failed"))
            else:
                future.set_result(logits)

        def done(logits: Logits | None, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this batch anymore
                loop.call_soon_threadsafe(settle, logits, error)

        batch = pad_rows(rows, self.template.pad_token_id, self.template.kind == "bert")
        started = time.perf_counter()
        if not self.runner.try_start_latency(batch, done):
            return None
        logits = await future
        if self._on_batch is not None:
            self._on_batch(len(rows), batch.padded_tokens, time.perf_counter() - started)
        return logits

    async def release(self) -> None:
        """Stop the batcher and free the compiled model."""
        if self.batcher is not None:
            await self.batcher.close()
        await asyncio.to_thread(self.runner.close)


_VERIFIED_STAMP = "verified.json"


def _file_stamps(version: ModelVersion) -> dict[str, list[int]]:
    stamps: dict[str, list[int]] = {}
    for relative in sorted(version.manifest.files):
        info = (version.path / relative).stat()
        stamps[relative] = [info.st_size, info.st_mtime_ns]
    return stamps


def verify_once(repository: ModelRepository, version: ModelVersion, cache_dir: Path | None) -> None:
    """Check a version's checksums, unless this cache already saw them pass on the very same files.

    Hashing every file is the slowest part of loading a large model from the compiled-model cache (2.2 GB
    for XLM-R-large in fp32). With a cache, a successful check leaves a stamp (each file's size and mtime);
    a later load whose files still match it skips the hashing. Without a cache every load verifies.
    """
    stamp = cache_dir / _VERIFIED_STAMP if cache_dir is not None else None
    if stamp is not None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text(encoding="utf-8")) == _file_stamps(version):
                return
    repository.verify(version.name, version.number)
    if stamp is not None:
        with contextlib.suppress(OSError):
            stamp.write_text(json.dumps(_file_stamps(version)), encoding="utf-8")


def load_version(repository: ModelRepository, version: ModelVersion, options: EngineOptions) -> LoadedVersion:
    """Verify the checksums of a version, then compile and warm it up (blocking; run on a thread)."""
    try:
        verify_once(repository, version, model_cache_dir(options.cache_dir, version))
        return LoadedVersion(version, options)
    except (RepositoryError, OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"version {version.number}: {exc}") from exc


@dataclass
class ServedModel:
    """One served name: the version new requests use, and the history of versions this server has seen."""

    name: str
    metrics: RuntimeMetrics | None = None
    current: LoadedVersion | None = None
    statuses: dict[int, VersionStatus] = field(default_factory=dict)
    last_load_error: str | None = None
    # Failed versions by (number, export hash): a published version never changes, so it is not retried.
    failed: set[tuple[int, str]] = field(default_factory=set)
    _releases: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def served_version(self) -> int | None:
        """Number of the version serving new requests."""
        return self.current.number if self.current is not None else None

    def set_state(self, version: int, state: VersionState, error: str | None = None) -> None:
        """Record a version's state for metadata and metrics."""
        previous = self.statuses.get(version)
        self.statuses[version] = VersionStatus(version, state, error)
        if self.metrics is not None:
            if previous is not None:
                self.metrics.version_state.labels(self.name, str(version), previous.state.value).set(0)
            self.metrics.version_state.labels(self.name, str(version), state.value).set(1)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[LoadedVersion]:
        """The current version, kept alive until the block ends even if a newer one takes over meanwhile."""
        version = self.current
        if version is None:
            raise ModelNotReadyError(f"model {self.name!r} is not loaded yet", retry_after=2.0)
        version.leases += 1
        try:
            yield version
        finally:
            version.leases -= 1
            if version.retired and version.leases == 0:
                self._schedule_release(version)

    def switch_to(self, version: LoadedVersion) -> None:
        """Make `version` serve new requests; the previous one is released when its last lease ends."""
        previous, self.current = self.current, version
        self.set_state(version.number, VersionState.AVAILABLE)
        if self.metrics is not None:
            self.metrics.served_version.labels(self.name).set(version.number)
        logger.info("model %s: serving version %d", self.name, version.number)
        if previous is not None and previous is not version:
            if self.metrics is not None:
                self.metrics.swaps.labels(self.name).inc()
            previous.retired = True
            if previous.leases == 0:
                self._schedule_release(previous)

    def _schedule_release(self, version: LoadedVersion) -> None:
        async def release() -> None:
            await version.release()
            self.set_state(version.number, VersionState.UNLOADED)
            logger.info("model %s: released version %d", self.name, version.number)

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def in_flight(self) -> int:
        """Requests holding a lease on any version of this model."""
        return self.current.leases if self.current is not None else 0

    async def close(self) -> None:
        """Release every version (shutdown)."""
        if self.current is not None:
            version, self.current = self.current, None
            await version.release()
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)


VersionLoader = Callable[[ModelVersion], Awaitable[LoadedVersion]]


class VersionWatcher:
    """Polls the repository and moves each served model to the version the repository says to serve.

    The target is the `current` pointer's version when one exists, else the highest complete version; a
    version that failed to load is skipped (and reported) while the version already serving stays in place.
    A published version this process may not read is reported the same way (log, metrics, FAILED state in
    `/v2/models/{name}`) and becomes a candidate again once it is readable.
    """

    def __init__(
        self,
        repository: ModelRepository,
        models: dict[str, ServedModel],
        *,
        options: EngineOptions,
        names: list[str] | None,
        poll_interval: float,
        metrics: RuntimeMetrics | None = None,
        loader: VersionLoader | None = None,
    ) -> None:
        self.repository = repository
        self.models = models
        self.options = options
        self.names = names
        self.poll_interval = poll_interval
        self.metrics = metrics
        self._loader = loader or self._load_on_thread

    async def _load_on_thread(self, version: ModelVersion) -> LoadedVersion:
        return await asyncio.to_thread(load_version, self.repository, version, self.options)

    async def run(self) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            try:
                await self.poll_once()
            except Exception:  # a broken poll must not end hot swapping for good
                logger.exception("repository poll failed")
            await asyncio.sleep(self.poll_interval)

    async def poll_once(self) -> None:
        """One pass over every served name."""
        names = self.names if self.names else await asyncio.to_thread(self.repository.served_names)
        for name in names:
            model = self.models.get(name)
            if model is None:
                model = self.models[name] = ServedModel(name, self.metrics)
                if self.metrics is not None:
                    self.metrics.served_version.labels(name).set(0)
            await self._reconcile(model)

    def _candidates(self, name: str) -> tuple[list[ModelVersion], dict[int, str]]:
        unreadable = self.repository.unreadable_versions(name)
        pinned = self.repository.current_pointer(name)
        if pinned is not None:
            return ([] if pinned in unreadable else [self.repository.get(name, pinned)]), unreadable
        return list(reversed(self.repository.versions(name))), unreadable

    def _report_unreadable(self, model: ServedModel, unreadable: dict[int, str]) -> None:
        for number, message in unreadable.items():
            known = model.statuses.get(number)
            if known is not None and known.state is VersionState.FAILED and known.error == message:
                continue  # reported already; one log line per version, not one per poll
            logger.error("model %s: %s", model.name, message)
            model.last_load_error = message
            model.set_state(number, VersionState.FAILED, message)
            if self.metrics is not None:
                self.metrics.load_failures.labels(model.name, str(number)).inc()
        if self.metrics is not None:
            self.metrics.unreadable_versions.labels(model.name).set(len(unreadable))

    async def _reconcile(self, model: ServedModel) -> None:
        try:
            candidates, unreadable = await asyncio.to_thread(self._candidates, model.name)
        except RepositoryError as exc:
            model.last_load_error = str(exc)
            return
        self._report_unreadable(model, unreadable)
        for candidate in candidates:
            if model.current is not None and candidate.number == model.current.number:
                return
            if (candidate.number, candidate.manifest.export_hash) in model.failed:
                continue
            if await self._load(model, candidate):
                return

    async def _load(self, model: ServedModel, candidate: ModelVersion) -> bool:
        model.set_state(candidate.number, VersionState.LOADING)
        started = time.perf_counter()
        try:
            loaded = await self._loader(candidate)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelLoadError) else f"version {candidate.number}: {exc}"
            logger.error("model %s: %s", model.name, message)
            model.failed.add((candidate.number, candidate.manifest.export_hash))
            model.last_load_error = message
            model.set_state(candidate.number, VersionState.FAILED, message)
            if self.metrics is not None:
                self.metrics.load_failures.labels(model.name, str(candidate.number)).inc()
            return False
        elapsed = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.load_seconds.labels(model.name, str(candidate.number)).set(elapsed)
        loaded.activate(self.metrics)
        model.switch_to(loaded)
        logger.info("model %s: version %d ready in %.1fs", model.name, candidate.number, elapsed)
        return True
