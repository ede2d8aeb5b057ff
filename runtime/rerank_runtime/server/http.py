"""The HTTP/1.1 server settings: uvicorn on h11 with timeouts for slow clients.

- head timeout: a client that opens a connection (or reuses an idle one) must finish its request head within
  `header_timeout` seconds, else it gets 408 and the connection is closed (uvicorn alone waits forever);
- body timeout: `RequestBodyGuard` (ASGI middleware) gives the body `body_timeout` seconds after the head;
- idle keep-alive connections close after `keep_alive_timeout` seconds;
- a request head over h11's 16 KiB limit gets 400 and the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from rerank_runtime.server.settings import Settings

_HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 34\r\n\r\nrequest head not received in time\n"
)


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline on receiving each request head."""

    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # New bytes on an idle connection start a request head: the clock starts with its first byte.
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request head may already be buffered and parsed; otherwise keep-alive's timer rules.
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._on_head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_HEAD_TIMEOUT_RESPONSE)
        self.transport.close()


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration `rerank-serve` runs with (tests use the same)."""
    protocol = type(
        "HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout": settings.header_timeout}
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol,
        "log_level": settings.log_level,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "timeout_graceful_shutdown": int(settings.drain_timeout) or None,
        "access_log": settings.log_level == "debug",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
