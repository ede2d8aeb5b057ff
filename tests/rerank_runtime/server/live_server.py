"""Run the real rerank server (uvicorn, real sockets) on 127.0.0.1 inside the test process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from rerank_runtime.engine.serving import RerankService
from rerank_runtime.server.app import create_app
from rerank_runtime.server.http import uvicorn_config
from rerank_runtime.server.settings import Settings


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """A server running on a background thread."""

    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    base_url: str

    @property
    def service(self) -> RerankService:
        """The app's rerank service (for white-box waits only)."""
        service: RerankService = self.app.state.service
        return service


def wait_until(condition: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition()` until it is true or fail with `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def live_server(
    settings: Settings, ready_timeout: float = 120.0, *, wait_ready: bool = True
) -> Iterator[LiveServer]:
    """Start `create_app(settings)` under uvicorn on 127.0.0.1 and wait until /v2/health/ready is 200
    (or only until it answers at all when `wait_ready` is false)."""
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    app = create_app(settings)
    config = uvicorn_config(app, settings, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    handle = LiveServer(app, server, thread, f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            status = httpx.get(f"{handle.base_url}/v2/health/ready", timeout=2).status_code
            return status == 200 or not wait_ready
        except httpx.TransportError:
            return False

    try:
        wait_until(lambda: not thread.is_alive() or ready(), ready_timeout, "server readiness", 0.1)
        assert thread.is_alive(), "server thread exited during start-up"
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=60)
