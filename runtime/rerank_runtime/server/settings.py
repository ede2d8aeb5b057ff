"""Server settings, read once at start-up from the command line and `RERANK_RUNTIME_*` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rerank_runtime.engine.versions import EngineOptions
from rerank_runtime.server.auth import read_key_file


class Settings(BaseSettings):
    """Everything `rerank-serve` can be told; environment variables use the `RERANK_RUNTIME_` prefix."""

    model_config = SettingsConfigDict(env_prefix="RERANK_RUNTIME_", extra="forbid")

    repository: Path = Field(description="Model repository root (SPEC §3 layout)")
    models: list[str] = Field(
        default_factory=list, description="Served names to serve; empty serves every name in the repository"
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(default=None, description="Require `Authorization: Bearer <key>`")
    api_key_file: Path | None = Field(
        default=None, description="File holding the API key; re-read when it changes (rotated Secret)"
    )
    api_key_reload_interval: float = Field(
        default=1.0, gt=0, description="Seconds between checks of the key file for a new key"
    )
    precision: Literal["auto", "f32", "bf16"] = "auto"
    poll_interval: float = Field(default=5.0, gt=0, description="Seconds between repository polls")
    max_batch_tokens: int = Field(default=8192, ge=64, description="Padded tokens per inference batch")
    max_queue_rows: int = Field(default=4096, ge=1, description="Rows that may wait for inference")
    max_inflight_requests: int = Field(default=256, ge=1, description="Requests in progress before 429")
    max_documents: int = Field(default=1000, ge=1, description="Documents per request (more: 413)")
    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Request body limit")
    max_tokens_per_doc: int = Field(default=4096, ge=1, description="Default document token cap")
    max_chunks_per_doc: int | None = Field(default=None, ge=1, description="Default window cap per document")
    num_streams: int | None = Field(default=None, ge=1, description="OpenVINO CPU streams (default: hint)")
    tokenizer_threads: int = Field(default=2, ge=1)
    cache_dir: Path | None = Field(
        default=None,
        description="OpenVINO compiled-model cache folder (writable; a restart imports instead of compiling)",
    )
    latency_max_tokens: int = Field(
        default=2048,
        ge=0,
        description="Padded tokens up to which a request on an idle server runs on the latency-compiled "
        "model (0: no latency model)",
    )
    inline_tokenize_chars: int = Field(
        default=2000,
        ge=0,
        description="Requests of at most this many characters tokenize on the event loop (no thread hop)",
    )
    shutdown_delay: float = Field(
        default=0.0, ge=0, description="Seconds to stay up not-ready after SIGTERM before draining"
    )
    drain_timeout: float = Field(default=30.0, ge=0, description="Seconds to wait for in-flight requests")
    latency_budget: float = Field(
        default=10.0,
        gt=0,
        description="Seconds from a request's arrival to its answer: work expected to take longer is refused "
        "at once (429 + Retry-After); a request still queued at its deadline gets 503",
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a client may take to send a request head (then closed)"
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a client may take to send a request body (then 408, closed)"
    )
    keep_alive_timeout: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection stays open"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json`: one JSON object per log line (for log collectors)"
    )

    @model_validator(mode="after")
    def _check_api_key_file(self) -> Settings:
        # Fail at start-up on an unreadable or empty key file; later changes are picked up by the KeyStore.
        if self.api_key is None and self.api_key_file is not None:
            read_key_file(self.api_key_file)
        return self

    def engine_options(self) -> EngineOptions:
        """The engine's share of the settings."""
        return EngineOptions(
            precision=self.precision,
            max_batch_tokens=self.max_batch_tokens,
            max_queue_rows=self.max_queue_rows,
            num_streams=self.num_streams,
            default_max_tokens_per_doc=self.max_tokens_per_doc,
            default_max_chunks_per_doc=self.max_chunks_per_doc,
            latency_max_tokens=self.latency_max_tokens,
            cache_dir=self.cache_dir,
        )
