"""API key check, done in ASGI middleware before any request body is read or parsed.

The key comes from `RERANK_RUNTIME_API_KEY` (fixed) or from a key file that is re-read when it changes: a
rotated Kubernetes Secret volume swaps a symlink (`..data`), so the file's identity (inode, size, mtime) is
checked at most once per reload interval and the new key applies without a restart. Keys are compared with
`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from rerank_runtime.server.errors import send_error

logger = logging.getLogger(__name__)


class ApiKeyFileError(ValueError):
    """The key file cannot be read or is empty."""


def read_key_file(path: Path) -> str:
    """The key in `path`, stripped of surrounding whitespace."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ApiKeyFileError(f"cannot read api key file {path}: {reason}") from exc
    if not key:
        raise ApiKeyFileError(f"api key file {path} is empty")
    return key


class KeyStore:
    """The accepted API key: fixed, or read from a file and re-read after it changes."""

    def __init__(
        self,
        key: str | None = None,
        path: Path | None = None,
        reload_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._reload_interval = reload_interval
        self._clock = clock
        self._identity: tuple[int, int, int, int] | None = None
        self._checked_at = clock()
        self._key = key.encode() if key is not None else None
        if path is not None and key is None:
            self._identity = self._stat()
            self._key = read_key_file(path).encode()

    @property
    def enabled(self) -> bool:
        """True when requests must carry a key."""
        return self._key is not None

    def _stat(self) -> tuple[int, int, int, int] | None:
        assert self._path is not None
        try:
            st = self._path.stat()  # follows the Secret volume's symlinks to the current file
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        now = self._clock()
        if now - self._checked_at < self._reload_interval:
            return
        self._checked_at = now
        identity = self._stat()
        if identity is None or identity == self._identity:
            return
        try:
            key = read_key_file(self._path)
        except ApiKeyFileError as exc:
            # Half-written or missing during a swap: keep the old key rather than open the server.
            logger.warning("%s; keeping the previous key", exc)
            return
        self._identity = identity
        if key.encode() != self._key:
            logger.info("api key file %s changed: new key in use", self._path)
        self._key = key.encode()

    def accepts(self, authorization: bytes | None) -> bool:
        """True when no key is required or `authorization` is `Bearer <current key>`."""
        self._maybe_reload()
        if self._key is None:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)


class ApiKeyGuard:
    """Answers 401 for protected paths without a valid key, before the request body is read."""

    def __init__(self, app: ASGIApp, keys: KeyStore, protected: Callable[[str], bool]) -> None:
        self.app = app
        self.keys = keys
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or not self.protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = next((value for key, value in scope["headers"] if key == b"authorization"), None)
        if self.keys.accepts(authorization):
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send 'Authorization: Bearer <key>'" if not authorization else "invalid API key"
        )
        await send_error(scope, send, 401, message, {"WWW-Authenticate": "Bearer"})
