"""The images built from Dockerfile.runtime and Dockerfile.operator, checked the way a user would run them.

Each container runs as an arbitrary non-root UID with a read-only root filesystem, no capabilities and
no-new-privileges, with a tmpfs on /tmp only (the operator's pods have an emptyDir there), on the host's
loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerank_runtime.repository import ModelRepository
from tests.rerank_runtime.server.conftest import server_settings
from tests.rerank_runtime.server.live_server import free_port, live_server
from tests.support.images import ROOT, inspect, podman

# A cold build of the three images takes up to ~30 min here (the export image downloads torch and CUDA
# wheels); `make test` builds them before pytest (`make images`), so here the fixture only re-tags.
pytestmark = [pytest.mark.node, pytest.mark.timeout(3600)]

RESTRICTED = [
    "--read-only",
    "--read-only-tmpfs=false",
    "--tmpfs=/tmp:rw,nosuid,nodev,size=256m",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
]
OTHER_UID = "23456:23456"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Bananas are yellow.",
    "France borders Spain.",
]


def chart_app_version() -> str:
    text = (ROOT / "charts" / "rerank-operator" / "Chart.yaml").read_text()
    found = re.search(r'^appVersion:\s*"?([^"\s]+)"?', text, re.MULTILINE)
    assert found
    return found.group(1)


@pytest.fixture
def world_readable_copy(minilm_repository: tuple[Path, str]) -> Iterator[tuple[Path, str]]:
    """The MiniLM repository in a folder any UID can reach (pytest's temp folders are 0700)."""
    root, name = minilm_repository
    parent = Path(tempfile.mkdtemp(prefix="rerank-image-repo-"))
    parent.chmod(0o755)
    try:
        shutil.copytree(root, parent / "models", symlinks=True)
        yield parent / "models", name
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize("name", ["runtime", "export", "operator"])
def test_image_metadata_user_labels_and_no_build_tools(built_images: dict[str, str], name: str) -> None:
    ref = built_images[name]
    config = inspect(ref)["Config"]
    user = config.get("User", "")
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"{ref}: USER {user!r} is not a numeric non-root UID"
    labels = config.get("Labels") or {}
    assert labels.get("org.opencontainers.image.title") == f"rerank-{name}"
    assert labels.get("org.opencontainers.image.version") == chart_app_version()
    assert labels.get("org.opencontainers.image.licenses") == "Apache-2.0"
    assert labels.get("org.opencontainers.image.source", "").startswith("https://")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels.get("org.opencontainers.image.revision", ""))
    probe = (
        "import importlib.util as u, os; "
        "print(sorted(m for m in ('pip', 'setuptools', 'wheel') if u.find_spec(m))); "
        "print(os.environ['HOME'], os.path.isdir(os.environ['HOME']))"
    )
    out = podman("run", "--rm", *RESTRICTED, "--user", OTHER_UID, "--entrypoint", "python", ref, "-c", probe)
    modules, home = out.stdout.strip().splitlines()
    assert modules == "[]", f"{ref} ships build tools: {modules}"
    # Build leftovers anywhere in the image (read as root: /root is 0700).
    leftovers = (
        "import glob; print(sorted(p for pattern in ('/root/.cache/*', '/tmp/*', '/opt/venv/bin/pip*', "
        "'/etc/pip.conf', '/src', '/opt/**/*.whl', '/opt/**/__pycache__/*.tmp*') "
        "for p in glob.glob(pattern, recursive=True)))"
    )
    out = podman("run", "--rm", "--user", "0", "--entrypoint", "python", ref, "-c", leftovers)
    assert out.stdout.strip() == "[]", f"{ref} ships build leftovers: {out.stdout.strip()}"
    assert home.endswith(" True"), f"{ref}: HOME does not exist ({home})"


def test_runtime_image_serves_a_mounted_repository_like_the_host_runtime(
    built_images: dict[str, str], world_readable_copy: tuple[Path, str]
) -> None:
    root, name = world_readable_copy
    port = free_port()
    container = f"rerank-image-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "-d", "--rm", "--name", container, *RESTRICTED, "--user", OTHER_UID, "--network", "host",
        "-v", f"{root}:/models:ro", built_images["runtime"],
        "--repository", "/models", "--host", "127.0.0.1", "--port", str(port), "--precision", "f32",
    )  # fmt: skip
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            running = podman("container", "exists", container, check=False).returncode == 0
            assert running, "the runtime container exited during start-up"
            assert time.monotonic() < deadline, podman("logs", container, check=False).stderr[-2000:]
            time.sleep(0.5)
        body = {"model": name, "query": QUERY, "documents": DOCUMENTS}
        response = httpx.post(f"{base_url}/v1/rerank", json=body, timeout=30)
        assert response.status_code == 200, response.text
        in_image = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        metadata = httpx.get(f"{base_url}/v2/models/{name}", timeout=5).json()
        assert metadata["served_version"] == 1
    finally:
        podman("rm", "-f", "-t", "5", container, check=False)
    # The same request to the runtime of this checkout running on the host: the image must score identically.
    with live_server(server_settings(root, models=[name], precision="f32", api_key=None)) as host:
        reference = httpx.post(f"{host.base_url}/v1/rerank", json=body, timeout=30).json()["results"]
    assert set(in_image) == set(range(len(DOCUMENTS)))
    for result in reference:
        assert in_image[result["index"]] == pytest.approx(result["relevance_score"], abs=1e-5)


def test_operator_image_starts(built_images: dict[str, str]) -> None:
    out = podman("run", "--rm", *RESTRICTED, "--user", OTHER_UID, built_images["operator"], "--help")
    assert "Usage: rerank-operator" in out.stdout, out.stdout + out.stderr


def test_export_image_exports_a_local_model_readable_by_another_uid(
    built_images: dict[str, str], minilm_hf_dir: Path, tmp_path: Path
) -> None:
    source = Path(tempfile.mkdtemp(prefix="rerank-image-source-"))
    try:
        shutil.copytree(minilm_hf_dir, source / "model")
        for path in [source, *source.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        repository = source / "repository"
        repository.mkdir()
        os.chown(repository, 34567, 34567)
        out = podman(
            "run", "--rm", *RESTRICTED, "--user", "34567:34567", "--network", "none",
            "-v", f"{source / 'model'}:/source:ro", "-v", f"{repository}:/models",
            "--entrypoint", "rerank-repo", built_images["export"],
            "export", "--source", "/source", "--repository", "/models", "--name", "minilm",
            "--weight-format", "fp32",
            timeout=900,
        )  # fmt: skip
        versions = ModelRepository(repository).versions("minilm")
        assert [v.number for v in versions] == [1], out.stdout + out.stderr
        for path in [versions[0].path, *versions[0].path.rglob("*")]:
            mode = path.stat().st_mode
            assert path.stat().st_uid == 34567
            assert mode & (0o055 if path.is_dir() else 0o044), f"{path} is not readable by other UIDs"
        listing = podman(
            "run", "--rm", *RESTRICTED, "--user", OTHER_UID, "-v", f"{repository}:/models:ro",
            "--entrypoint", "rerank-repo", built_images["runtime"],
            "list", "--repository", "/models", "--json",
        )  # fmt: skip
        assert json.loads(listing.stdout), "another UID sees the exported version"
    finally:
        shutil.rmtree(source, ignore_errors=True)
