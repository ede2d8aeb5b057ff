"""Hot swap under load: new versions load beside the old one and switch in without a failed request."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx

from rerank_runtime.repository import ModelRepository, ModelVersion
from tests.rerank_runtime.server.conftest import API_KEY, server_settings
from tests.rerank_runtime.server.live_server import live_server, wait_until

BODY = {"query": "welcome", "documents": ["good morning", "farewell", "see you later"], "top_n": 2}


def publish_copy(repository: ModelRepository, name: str, tag: str) -> ModelVersion:
    """Publish the files of version 1 again as a new version (a new export hash makes it distinct)."""
    source = repository.get(name, 1)
    with repository.staging(name) as staging:
        for relative in source.manifest.files:
            shutil.copy2(source.path / relative, staging / relative)
        manifest = source.manifest.model_copy(
            update={"export_hash": f"hot-swap-{tag}", "created_at": datetime.now(UTC).isoformat()}
        )
        return repository.publish(name, staging, manifest)


class LoadClient:
    """Threads that send rerank requests back to back and record (status, x-model-version)."""

    def __init__(self, base_url: str, threads: int = 2) -> None:
        self.base_url = base_url
        self.records: list[list[tuple[int, str | None]]] = [[] for _ in range(threads)]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, slot: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v2/rerank", json=BODY, headers=headers)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.records[slot].append((response.status_code, response.headers.get("x-model-version")))

    def latest(self) -> str | None:
        """The version header of the most recent response of any thread."""
        last = [records[-1][1] for records in self.records if records]
        return max(last, key=lambda v: int(v or 0)) if last else None

    def sent(self) -> int:
        return sum(len(records) for records in self.records)

    def __enter__(self) -> LoadClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_hot_swap_under_load(minilm_repository: tuple[Path, str], tmp_path: Path) -> None:
    """Versions 2 and 3 take over while requests flow; a corrupt version 4 is reported and 3 keeps serving."""
    root = tmp_path / "repository"
    shutil.copytree(minilm_repository[0], root)
    name = minilm_repository[1]
    repository = ModelRepository(root)
    settings = server_settings(root, models=[name], precision="f32", poll_interval=0.2)
    with live_server(settings) as server, LoadClient(server.base_url) as load:
        metadata_url = f"{server.base_url}/v2/models/{name.replace('/', '%2F')}"
        wait_until(lambda: load.sent() >= 20, 30, "first responses")
        assert load.latest() == "1"

        publish_copy(repository, name, "v2")
        wait_until(lambda: load.latest() == "2", 60, "responses from version 2")
        sent_before_v3 = load.sent()
        publish_copy(repository, name, "v3")
        wait_until(lambda: load.latest() == "3", 60, "responses from version 3")

        # Pin 3, publish 4, damage its weights on disk, then ask for 4: verification must refuse it.
        repository.promote(name, 3)
        broken = publish_copy(repository, name, "v4-corrupt")
        weights = broken.path / "model.bin"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        repository.promote(name, 4)

        def version_4_failed() -> bool:
            versions = httpx.get(metadata_url).json()["versions"]
            return any(v["version"] == 4 and v["state"] == "FAILED" for v in versions)

        wait_until(version_4_failed, 60, "version 4 reported as FAILED")
        settled = load.sent()
        wait_until(lambda: load.sent() >= settled + 20, 30, "requests after the failed load")
        metadata = httpx.get(metadata_url).json()
        metrics = httpx.get(f"{server.base_url}/metrics").text

    total = load.sent()
    statuses = [status for records in load.records for status, _ in records]
    print(f"\nhot swap: {total} requests, {statuses.count(200)} ok, transport errors {len(load.errors)}")
    assert load.errors == []
    assert set(statuses) == {200}
    assert total > sent_before_v3 > 20
    seen: set[int] = set()
    for records in load.records:
        versions = [int(v or 0) for _, v in records]
        # Each client sees versions only move forward: no request is served by a version older than one
        # that already answered that client.
        assert versions == sorted(versions), "a client saw an older version after a newer one"
        seen.update(versions)
    print("x-model-version sequence: " + " -> ".join(str(v) for v in sorted(seen)))
    assert sorted(seen) == [1, 2, 3]

    assert metadata["served_version"] == 3
    states = {v["version"]: v["state"] for v in metadata["versions"]}
    assert states == {1: "UNLOADED", 2: "UNLOADED", 3: "AVAILABLE", 4: "FAILED"}
    assert "model.bin" in metadata["last_load_error"]
    assert f'rerank_model_load_failures_total{{model="{name}",version="4"}} 1.0' in metrics
    assert f'rerank_served_version{{model="{name}"}} 3.0' in metrics
