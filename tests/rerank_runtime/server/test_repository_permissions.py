"""A runtime with another UID than the exporter: published versions are readable, unreadable ones reported.

The server runs as it does in a pod: `rerank-serve` in its own process whose UID differs from the owner of the
repository. As root the test publishes, hands the repository to another UID (nobody) and runs the server as
root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (the interpreter lives under /root, which nobody may not
enter), so only group/other permission bits let it read; otherwise a mode-0 folder is unreadable to the test's
own UID just the same.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from rerank_runtime.repository import ModelRepository, ModelVersion
from tests.rerank_runtime.server.live_server import free_port, wait_until

ROOT = Path(__file__).resolve().parents[3]
NOBODY = 65534
BODY = {"query": "welcome", "documents": ["good morning", "farewell"]}


def publish_as_exporter(repository: ModelRepository, source: ModelVersion, tag: str) -> ModelVersion:
    """Publish the files of `source` as a new version under the strictest umask an exporter may have."""
    old_umask = os.umask(0o077)
    try:
        with repository.staging(source.name) as staging:
            for relative in source.manifest.files:
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.path / relative, staging / relative)
            manifest = source.manifest.model_copy(
                update={"export_hash": f"permissions-{tag}", "created_at": datetime.now(UTC).isoformat()}
            )
            return repository.publish(source.name, staging, manifest)
    finally:
        os.umask(old_umask)


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A repository root any UID can reach (pytest's own temp folders are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="rerank-permissions-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def serve_as_other_uid(tmp_path: Path) -> Iterator[tuple[Callable[[Path], str], Path]]:
    """Start `rerank-serve` as nobody (when root) on a free loopback port; returns (start, log file)."""
    log = tmp_path / "server.log"
    processes: list[subprocess.Popen[bytes]] = []
    home = tmp_path / "home"
    home.mkdir()

    def start(repository: Path) -> str:
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT / "operator", ROOT / "runtime", ROOT)),
        }
        command = [sys.executable, "-m", "rerank_runtime.server.cli", "--repository", str(repository)]
        if os.geteuid() == 0:
            command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
        command += ["--host", "127.0.0.1", "--port", str(port), "--poll-interval", "0.5"]
        with log.open("wb") as out:
            processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    try:
        yield start, log
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def hand_over(path: Path) -> None:
    """Give ``path`` to the exporter's UID (nobody) when the test is root, as an exporter pod would own it."""
    if os.geteuid() != 0:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, NOBODY, NOBODY, follow_symlinks=False)


def metric(base_url: str, name: str, model: str) -> float | None:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    found = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_runtime_with_another_uid_serves_published_versions_and_reports_an_unreadable_one(
    minilm_repository: tuple[Path, str],
    shared_root: Path,
    serve_as_other_uid: tuple[Callable[[Path], str], Path],
) -> None:
    fixture_root, name = minilm_repository
    source = ModelRepository(fixture_root).get(name, 1)
    repository = ModelRepository(shared_root)
    publish_as_exporter(repository, source, "v1")
    hand_over(shared_root)
    start, log = serve_as_other_uid
    base_url = start(shared_root)

    def metadata() -> dict[str, object]:
        response = httpx.get(f"{base_url}/v2/models/{name}", timeout=5)
        return response.json() if response.status_code == 200 else {}  # type: ignore[no-any-return]

    def answers() -> bool:
        try:
            return metadata().get("served_version") == 1
        except httpx.TransportError:
            return False

    wait_until(
        answers, 120, f"version 1 served by a runtime with another UID (log: {log.read_text()[-2000:]})"
    )
    scored = httpx.post(f"{base_url}/v1/rerank", json={"model": name, **BODY}, timeout=30)
    assert scored.status_code == 200, scored.text
    assert len(scored.json()["results"]) == 2

    # Version 2 is published, then made unreadable the way a 0700 export by another UID is.
    version2 = publish_as_exporter(repository, source, "v2")
    hand_over(version2.path)
    version2.path.chmod(0o700 if os.geteuid() == 0 else 0)  # 0700 of another UID: the server may not enter

    def reported() -> bool:
        versions = {v["version"]: v for v in metadata().get("versions", [])}  # type: ignore[attr-defined]
        return versions.get(2, {}).get("state") == "FAILED"

    wait_until(reported, 30, "the unreadable version 2 reported in /v2/models")
    report = metadata()
    failed = next(v for v in report["versions"] if v["version"] == 2)  # type: ignore[attr-defined]
    assert "cannot read" in failed["error"] and "Permission denied" in failed["error"], failed
    assert report["served_version"] == 1, "the readable version keeps serving"
    assert "cannot read" in str(report["last_load_error"])
    assert metric(base_url, "rerank_model_versions_unreadable", name) == 1.0
    assert "version 2: cannot read" in log.read_text(), "the server logs the unreadable version"
    assert httpx.post(f"{base_url}/v1/rerank", json={"model": name, **BODY}, timeout=30).status_code == 200

    # Readable again: the report clears and the version is served.
    version2.path.chmod(0o755)
    wait_until(lambda: metadata().get("served_version") == 2, 120, "version 2 served once readable")
    assert metric(base_url, "rerank_model_versions_unreadable", name) == 0.0
    assert log.read_text().count("version 2: cannot read") == 1, "reported once, not once per poll"
