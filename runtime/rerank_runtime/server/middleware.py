"""ASGI middleware: request body limits (size 413, read timeout 408) and per-route request metrics."""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerank_runtime.engine.metrics import RuntimeMetrics
from rerank_runtime.server.errors import send_error


class RequestBodyGuard:
    """Bounds how much body a request may send (413) and how long it may take to send it (408).

    The size is checked against Content-Length up front and while streaming. The whole body must arrive
    within `timeout` seconds of the request head; a stalled or trickling client gets 408 and its connection
    is closed (the rest of its body could not be told apart from a next request). Once the body is complete
    `receive` passes through untouched, so waiting for a disconnect is not cut short.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body exceeds the limit of {self.limit} bytes"
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await send_error(scope, send, 413, too_large)
                return
        received = 0
        complete = False
        deadline = time.monotonic() + self.timeout

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                incoming = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"request body not received within {self.timeout:g} s",
                    headers={"Connection": "close"},
                ) from None
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, too_large)
                complete = not incoming.get("more_body", False)
            else:
                complete = True
            return incoming

        await self.app(scope, guarded_receive, send)


class RequestMetrics:
    """Counts requests by route template and status code, observes their latency, stamps the arrival."""

    def __init__(self, app: ASGIApp, metrics: RuntimeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Deadlines count from here (request head received), so time spent queued counts against them.
        scope.setdefault("state", {})["received_at"] = time.monotonic()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            # The route template, not the raw path, keeps label cardinality bounded.
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.request_latency.labels(label).observe(time.perf_counter() - started)
