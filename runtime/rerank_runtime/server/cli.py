"""`rerank-serve`: parse the command line into Settings (environment fills the rest) and run uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.config import LOGGING_CONFIG

from rerank_runtime.engine.serving import RerankService
from rerank_runtime.server.app import create_app
from rerank_runtime.server.http import uvicorn_config
from rerank_runtime.server.logs import configure_logging
from rerank_runtime.server.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerank-serve",
        description="Serve cross-encoder rerank models from a model repository (Cohere-compatible API).",
        epilog="Every option can also be set as RERANK_RUNTIME_<OPTION> in the environment.",
    )
    parser.add_argument("--repository", type=Path, help="model repository root")
    parser.add_argument("--model", dest="models", action="append", help="served name (repeatable)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--api-key-file", type=Path, help="require this key as 'Authorization: Bearer'")
    parser.add_argument("--precision", choices=["auto", "f32", "bf16"])
    parser.add_argument("--poll-interval", type=float, help="seconds between repository polls")
    parser.add_argument("--max-batch-tokens", type=int, help="padded tokens per inference batch")
    parser.add_argument("--max-queue-rows", type=int)
    parser.add_argument("--num-streams", type=int, help="OpenVINO CPU streams (default: throughput hint)")
    parser.add_argument("--cache-dir", type=Path, help="OpenVINO compiled-model cache folder (writable)")
    parser.add_argument(
        "--latency-max-tokens", type=int, help="padded tokens of the latency path (0 turns it off)"
    )
    parser.add_argument("--shutdown-delay", type=float, help="seconds not-ready before draining on SIGTERM")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="json: one JSON object per line (default: text)"
    )
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Settings from argv (given options win) and RERANK_RUNTIME_* environment variables."""
    args = vars(_parser().parse_args(argv))
    overrides: dict[str, Any] = {key: value for key, value in args.items() if value is not None}
    return Settings(**overrides)


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: not ready at once; after `shutdown_delay` uvicorn drains requests and exits."""

    def __init__(self, config: uvicorn.Config, service: RerankService, shutdown_delay: float) -> None:
        super().__init__(config)
        self._service = service
        self._shutdown_delay = shutdown_delay
        self._exit_timer: threading.Timer | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # A drained shutdown on SIGTERM is a clean exit (status 0); uvicorn would re-raise the signal.
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._service.begin_drain()
        if self._shutdown_delay > 0 and self._exit_timer is None:
            # Give load balancers time to see the pod not ready before connections start closing.
            self._exit_timer = threading.Timer(self._shutdown_delay, super().handle_exit, (sig, frame))
            self._exit_timer.daemon = True
            self._exit_timer.start()
            return
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `rerank-serve`."""
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        print(f"error: {where}: {first['msg']}", file=sys.stderr)
        return 2
    if not settings.repository.is_dir():
        print(f"error: repository {settings.repository} is not a directory", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # JSON lines: uvicorn's own formatters would print text, so its loggers propagate to ours instead.
    log_config = None if settings.log_format == "json" else LOGGING_CONFIG
    config = uvicorn_config(app, settings, log_config=log_config)
    server = DrainingServer(config, app.state.service, settings.shutdown_delay)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
