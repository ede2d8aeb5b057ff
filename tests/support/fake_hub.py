"""A local stand-in for the Hugging Face Hub (the one thing that cannot exist on these machines).

It speaks the part of the Hub's HTTP API that huggingface-hub's ``model_info``, ``list_repo_files`` and
``snapshot_download`` use, so the real client code runs against it:

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info with the commit ``sha``
- ``GET /api/models/{repo}/tree/{rev}``: file listing
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: file metadata (X-Repo-Commit, ETag, size) and content

Errors use the Hub's conventions: 404 + ``X-Error-Code: RepoNotFound`` for unknown repos, 401 +
``X-Error-Message: Invalid credentials in Authorization header`` for a wrong token, 401 + RepoNotFound for a
missing token on a private repo, 404 + RevisionNotFound / EntryNotFound.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class _Repo:
    commits: dict[str, Path] = field(default_factory=dict)  # sha -> folder with the files of that commit
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha


def _commit_sha(repo_id: str, folder: Path, ref: str) -> str:
    digest = hashlib.sha1(f"{repo_id}\0{ref}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class FakeHub:
    """State of the fake hub; tests register repos and switch on tokens and stalls."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Serve on ``host`` (loopback by default; the real node's IP when pods must reach it)."""
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self.required_token: str | None = None
        self.unavailable_status: int | None = None
        self._stall_downloads = threading.Event()
        self._release = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_revision(self, repo_id: str, folder: Path, ref: str = "main") -> str:
        """Publish ``folder`` as a new commit of ``repo_id`` and point ``ref`` at it; returns the sha."""
        sha = _commit_sha(repo_id, Path(folder), ref)
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[sha] = Path(folder)
            repo.refs[ref] = sha
        return sha

    def sha_of(self, repo_id: str, ref: str = "main") -> str:
        """The commit sha ``ref`` of ``repo_id`` currently points at."""
        with self._lock:
            return self._repos[repo_id].refs[ref]

    @contextlib.contextmanager
    def token_required(self, token: str) -> Iterator[None]:
        """Within the block every repo is private and only ``token`` is accepted."""
        self.required_token = token
        try:
            yield
        finally:
            self.required_token = None

    @contextlib.contextmanager
    def stalled_downloads(self) -> Iterator[None]:
        """Within the block file downloads (resolve requests) accept the connection and never answer."""
        self._release.clear()
        self._stall_downloads.set()
        try:
            yield
        finally:
            self._stall_downloads.clear()
            self._release.set()

    @contextlib.contextmanager
    def unavailable(self, status: int = 503) -> Iterator[None]:
        """Within the block every request is answered with ``status`` (an overloaded hub or proxy)."""
        self.unavailable_status = status
        try:
            yield
        finally:
            self.unavailable_status = None

    def close(self) -> None:
        """Stop the server (releases stalled requests)."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _resolve(self, repo_id: str, rev: str) -> tuple[str, Path] | None:
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                return None
            sha = repo.refs.get(rev, rev)
            folder = repo.commits.get(sha)
            return (sha, folder) if folder is not None else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, payload: object, status: int = 200) -> None:
                self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

            def _error(self, status: int, code: str | None = None, message: str | None = None) -> None:
                headers = {"Content-Type": "application/json"}
                if code:
                    headers["X-Error-Code"] = code
                if message:
                    headers["X-Error-Message"] = message
                body = json.dumps({"error": message or code or "error"}).encode()
                self._send(status, body, headers)

            def _authorised(self) -> bool:
                if hub.required_token is None:
                    return True
                auth = self.headers.get("Authorization")
                if auth is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                    return False
                if auth != f"Bearer {hub.required_token}":
                    self._error(401, None, "Invalid credentials in Authorization header")
                    return False
                return True

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                if hub.unavailable_status is not None:
                    self._error(hub.unavailable_status, None, "Service Unavailable")
                    return
                if not self._authorised():
                    return
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path):
                    self._tree(m.group(1), m.group(2))
                elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
                    self._info(m.group(1), m.group(2) or "main")
                elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    self._file(m.group(1), m.group(2), m.group(3))
                else:
                    self._error(404, None, f"no route {path}")

            def _lookup(self, repo_id: str, rev: str) -> tuple[str, Path] | None:
                if repo_id not in hub._repos:
                    self._error(404, "RepoNotFound", "Repository not found")
                    return None
                found = hub._resolve(repo_id, rev)
                if found is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return found

            def _files(self, folder: Path) -> list[Path]:
                return sorted(p for p in folder.rglob("*") if p.is_file())

            def _info(self, repo_id: str, rev: str) -> None:
                found = self._lookup(repo_id, rev)
                if found is None:
                    return
                sha, folder = found
                siblings = [{"rfilename": p.relative_to(folder).as_posix()} for p in self._files(folder)]
                self._json(
                    {
                        "_id": sha[:24],
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": sha,
                        "private": hub.required_token is not None,
                        "disabled": False,
                        "gated": False,
                        "tags": ["transformers", "text-classification"],
                        "pipeline_tag": "text-classification",
                        "library_name": "transformers",
                        "siblings": siblings,
                        "downloads": 0,
                        "likes": 0,
                        "lastModified": "2026-01-01T00:00:00.000Z",
                        "createdAt": "2026-01-01T00:00:00.000Z",
                    }
                )

            def _tree(self, repo_id: str, rev: str) -> None:
                found = self._lookup(repo_id, rev)
                if found is None:
                    return
                _, folder = found
                entries = [
                    {
                        "type": "file",
                        "path": p.relative_to(folder).as_posix(),
                        "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                    }
                    for p in self._files(folder)
                ]
                self._json(entries)

            def _file(self, repo_id: str, rev: str, filename: str) -> None:
                if hub._stall_downloads.is_set():
                    hub._release.wait(timeout=300)  # hold the connection silently: a stalled download
                    return
                found = self._lookup(repo_id, rev)
                if found is None:
                    return
                sha, folder = found
                file = folder / filename
                if ".." in filename or not file.is_file():
                    self._error(404, "EntryNotFound", f"{filename} does not exist")
                    return
                data = file.read_bytes()
                headers = {
                    "X-Repo-Commit": sha,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Content-Type": "application/octet-stream",
                    "Accept-Ranges": "bytes",
                }
                status = 200
                if (rng := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng)):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else len(data) - 1
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    data = data[start : end + 1]
                    status = 206
                self._send(status, data, headers)

        return Handler
