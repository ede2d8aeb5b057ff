"""Fixtures of the real-node end-to-end tests: the project's images in the node's containerd, the Hugging
Face stand-in on the node IP, the chart installed with Helm, namespaces under Pod Security "restricted" and
static local PersistentVolumes."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.controlplane import REPO_ROOT
from tests.support.fake_hub import FakeHub
from tests.support.kubelet import KubeApiError, KubeRest
from tests.support.node import NODE_IP, NODE_NAME
from tests.support.node_fixtures import NodeCluster, node_cluster_context

API = "/apis/serving.rerank.dev/v1alpha1"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
HUB_REPO = "test-org/minilm-reranker"


@dataclass
class Transcript:
    """Steps with their durations, printed at the end of the test (and kept for the report)."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    _step_started: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        now = time.monotonic()
        self.lines.append(f"[{now - self.started:7.1f}s] {text}")
        print(self.lines[-1], flush=True)
        self._step_started = now

    def done(self, text: str) -> None:
        self.step(f"  {text} ({time.monotonic() - self._step_started:.1f}s)")


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (KubeApiError, KeyError, IndexError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


@pytest.fixture(scope="package")
def node_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeCluster]:
    """Control plane + real node for the node tier; torn down (host changes undone) after its last test."""
    with node_cluster_context(request, tmp_path_factory) as cluster:
        yield cluster


@dataclass(frozen=True)
class ProjectImages:
    runtime: str
    export: str
    operator: str


@pytest.fixture(scope="module")
def project_images(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> ProjectImages:
    """rerank-runtime, rerank-export and rerank-operator built from the Dockerfiles (hack/images.sh, cached)
    and imported into the node's containerd (skipped when that archive was imported already)."""
    out = tmp_path_factory.mktemp("images")
    refs = subprocess.run(
        ["bash", "hack/images.sh", "refs"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    saved = subprocess.run(
        ["bash", "hack/images.sh", "save", str(out)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,
    )
    assert saved.returncode == 0, "hack/images.sh save failed (its messages are above)"
    for archive in saved.stdout.split():
        node_cluster.import_image(Path(archive))
    by_name = {ref.rsplit("/", 1)[-1].split(":", 1)[0]: ref for ref in refs}
    images = ProjectImages(by_name["rerank-runtime"], by_name["rerank-export"], by_name["rerank-operator"])
    present = node_cluster.node.image_digests()
    for ref in (images.runtime, images.export, images.operator):
        assert any(name == ref or name.endswith("/" + ref) for name in present), f"{ref} not in containerd"
    return images


@pytest.fixture(scope="module")
def node_hub(minilm_hf_dir: Path) -> Iterator[FakeHub]:
    """The Hugging Face stand-in, listening on the node IP so export Jobs in pods reach it."""
    hub = FakeHub(host=NODE_IP)
    hub.add_revision(HUB_REPO, minilm_hf_dir)
    try:
        yield hub
    finally:
        hub.close()


@pytest.fixture(scope="module")
def hf_reference(minilm_hf_dir: Path) -> Callable[[str, list[str]], np.ndarray]:
    """Hugging Face transformers' scores (sigmoid of the logit) for the same model, computed on the host."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_hf_dir)).eval()

    def score(query: str, documents: list[str]) -> np.ndarray:
        batch = tokenizer(
            [query] * len(documents), documents, padding=True, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(**batch).logits[:, 0].double().numpy()
        result: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return result

    return score


def create_namespace(rest: KubeRest, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    rest.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}},
    )
    wait_until(
        "default ServiceAccount", lambda: rest.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30
    )
    return name


def local_volume(cluster: NodeCluster, storage_class: str, size: str = "2Gi") -> str:
    """A static local PersistentVolume on the node (its directory lives under the node directory)."""
    name = f"pv-{secrets.token_hex(4)}"
    path = cluster.node.node_dir / "volumes" / name
    path.mkdir(parents=True)
    cluster.rest.request(
        "POST",
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": storage_class,
                "local": {"path": str(path)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
                                ]
                            }
                        ]
                    }
                },
            },
        },
    )
    return name


@dataclass
class Release:
    cluster: NodeCluster
    namespace: str
    name: str
    images: ProjectImages
    install_seconds: float = 0.0


@pytest.fixture(scope="module")
def operator_release(node_cluster: NodeCluster, project_images: ProjectImages) -> Iterator[Release]:
    """``helm install`` of the chart into a restricted namespace, the operator running from its image."""
    rest = node_cluster.rest
    namespace = create_namespace(rest, "rerank-system")
    release = Release(node_cluster, namespace, "rerank", project_images)
    operator_repo, operator_tag = project_images.operator.rsplit(":", 1)
    started = time.monotonic()
    node_cluster.run(
        "helm", "install", release.name, str(REPO_ROOT / "charts" / "rerank-operator"),
        "--namespace", namespace, "--wait", "--timeout", "5m",
        "--set", f"image.repository={operator_repo}", "--set", f"image.tag={operator_tag}",
        "--set", "image.pullPolicy=Never",
        "--set", f"operator.runtimeImage={project_images.runtime}",
        "--set", f"operator.exportImage={project_images.export}",
        "--set", "operator.reconcileInterval=2",
    )  # fmt: skip
    release.install_seconds = time.monotonic() - started
    try:
        yield release
    finally:
        node_cluster.run("helm", "uninstall", release.name, "--namespace", namespace, "--wait", check=False)
        with contextlib.suppress(KubeApiError):
            rest.request("DELETE", f"/api/v1/namespaces/{namespace}")


# -- helpers ------------------------------------------------------------------------------------------------


def model_status(rest: KubeRest, namespace: str, name: str) -> dict[str, Any]:
    return rest.get(f"{API}/namespaces/{namespace}/rerankmodels/{name}").get("status") or {}


def patch_model(rest: KubeRest, namespace: str, name: str, patch: dict[str, Any]) -> None:
    rest.request(
        "PATCH",
        f"{API}/namespaces/{namespace}/rerankmodels/{name}",
        patch,
        content_type="application/merge-patch+json",
    )


def load_summary(cluster: NodeCluster, namespace: str, pod: str) -> tuple[int, int, str]:
    lines = [
        line
        for line in cluster.kubectl("-n", namespace, "logs", pod).splitlines()
        if line.startswith("summary")
    ]
    if not lines:
        return 0, 0, "-"
    fields = dict(part.split("=", 1) for part in lines[-1].split()[1:])
    return int(fields["ok"]), int(fields["failed"]), fields["last_error"]


def pod_security_facts(cluster: NodeCluster, namespace: str, pod: str, container: str) -> tuple[str, str]:
    """(uid as the container sees it, result of writing to /) through kubectl exec on the real kubelet."""
    uid = cluster.kubectl("-n", namespace, "exec", pod, "-c", container, "--", "id", "-u").strip()
    write = subprocess.run(
        [str(cluster.plane.bin_dir / "kubectl"), "-n", namespace, "exec", pod, "-c", container, "--",
         "touch", "/written-by-test"],
        capture_output=True, text=True, env=cluster.env(), timeout=60,
    )  # fmt: skip
    return uid, write.stderr
