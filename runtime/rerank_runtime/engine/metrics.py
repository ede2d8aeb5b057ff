"""Prometheus metrics of one server instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BATCH_TOKENS_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class RuntimeMetrics:
    """Every metric the runtime exports on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rerank_requests", "HTTP requests by route and status code", ["route", "code"], registry=r
        )
        self.request_latency = Histogram(
            "rerank_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.documents = Counter("rerank_documents", "Documents scored", ["model"], registry=r)
        self.input_tokens = Counter(
            "rerank_input_tokens", "Tokens scored (no padding)", ["model"], registry=r
        )
        self.queue_depth = Gauge("rerank_queue_depth", "Rows waiting for inference", ["model"], registry=r)
        self.batch_rows = Histogram(
            "rerank_batch_size",
            "Rows per inference batch",
            ["model"],
            buckets=_BATCH_ROWS_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "rerank_batch_tokens",
            "Padded tokens per inference batch",
            ["model"],
            buckets=_BATCH_TOKENS_BUCKETS,
            registry=r,
        )
        self.served_version = Gauge(
            "rerank_served_version", "Model version serving requests (0: none)", ["model"], registry=r
        )
        self.load_seconds = Gauge(
            "rerank_model_load_seconds",
            "Time to verify, compile and warm up a model version",
            ["model", "version"],
            registry=r,
        )
        self.load_failures = Counter(
            "rerank_model_load_failures",
            "Model versions that failed to load",
            ["model", "version"],
            registry=r,
        )
        self.version_state = Gauge(
            "rerank_model_version_state",
            "1 for the state each known model version is in",
            ["model", "version", "state"],
            registry=r,
        )
        self.swaps = Counter(
            "rerank_model_swaps", "Hot swaps from one served model version to another", ["model"], registry=r
        )
        self.unreadable_versions = Gauge(
            "rerank_model_versions_unreadable",
            "Published versions this server may not read (permissions); see /v2/models/{name}",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "rerank_rejected_requests",
            "Requests refused (429) or failed in the queue (503): reason budget, queue, inflight or deadline",
            ["model", "reason"],
            registry=r,
        )
        self.cancelled_rows = Counter(
            "rerank_cancelled_rows",
            "Rows not scored (stage queued) or scored in vain (stage running) because their request ended "
            "first: client gone, deadline passed or error",
            ["model", "stage"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rerank_batch_duration_seconds",
            "Time one inference batch takes",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.throughput = Gauge(
            "rerank_throughput_tokens_per_second",
            "Measured tokens per second of the serving version (drives admission)",
            ["model"],
            registry=r,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)
