"""The API key is checked before the body is read, and a rotated key file applies without a restart."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.rerank_runtime.server.conftest import server_settings
from tests.rerank_runtime.server.live_server import LiveServer, live_server

BODY = {"query": "welcome", "documents": ["good morning", "farewell"]}


def _raw_request(server: LiveServer, head: bytes, timeout: float) -> tuple[bytes, float]:
    """Send `head` (no body) and return the first response bytes and how long they took."""
    url = urlsplit(server.base_url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(head)
        data = sock.recv(65536)
        return data, time.monotonic() - started


def test_key_is_checked_before_the_body_is_read(f32_server: LiveServer) -> None:
    """No key + a body that never comes: 401 at once (the server does not wait for, or parse, the body)."""
    head = (
        b"POST /v1/rerank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"query": '
    )
    data, elapsed = _raw_request(f32_server, head, timeout=20)
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert b"www-authenticate: Bearer" in data.lower().replace(b"bearer", b"Bearer")
    assert elapsed < 5, f"401 took {elapsed:.1f}s: the server waited for the body"


class SecretVolume:
    """A Kubernetes Secret volume: `key -> ..data/key`, `..data -> ..<timestamp>/`; updates swap `..data`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()
        (root / "key").symlink_to("..data/key")

    def write(self, key: str) -> None:
        self.generation += 1
        target = self.root / f"..2026_12_02_{self.generation:04d}"
        target.mkdir()
        (target / "key").write_text(key + "\n")
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        tmp.replace(self.root / "..data")  # the atomic swap the kubelet does


def test_rotated_key_applies_within_the_reload_interval(
    minilm_repository: tuple[Path, str], tmp_path: Path
) -> None:
    """Old key 401 and new key 200 within the reload interval of the swap; same server, no restart."""
    root, name = minilm_repository
    secret = SecretVolume(tmp_path / "secret")
    secret.write("first-key")
    interval = 0.5
    settings = server_settings(
        root, models=[name], api_key=None, api_key_file=secret.root / "key", api_key_reload_interval=interval
    )
    with live_server(settings) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:

        def status(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            return client.post("/v1/rerank", json=BODY, headers=headers).status_code

        assert status("first-key") == 200
        assert status("second-key") == 401
        thread = server.thread
        secret.write("second-key")
        swapped = time.monotonic()
        while status("second-key") != 200:
            assert time.monotonic() - swapped < interval + 2, "the new key was not picked up"
            time.sleep(0.05)
        picked_up = time.monotonic() - swapped
        assert status("first-key") == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer first-key"}).status_code == 401
        # A swap to an empty file (a broken update) keeps the current key instead of opening the server.
        secret.write("")
        time.sleep(interval * 3)
        assert status("second-key") == 200 and status("other") == 401
        assert server.thread is thread and thread.is_alive()
        print(f"\nkey rotation: new key accepted {picked_up:.2f}s after the swap (interval {interval}s)")
