"""The real node works as a user's cluster does: pods run through containerd and runc under the kubelet,
a Service routes through kube-proxy, names resolve through cluster DNS, and the restricted Pod Security level
and securityContext are enforced."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.support.kubelet import KubeApiError
from tests.support.node import probe_image_archive, probe_image_ref
from tests.support.node_fixtures import NodeCluster, wait_pods_ready
from tests.support.polling import wait_for

RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _namespace(cluster: NodeCluster, prefix: str, labels: dict[str, str]) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    cluster.rest.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
    )
    wait_for(lambda: _exists(cluster, f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30, "default SA")
    return name


def _exists(cluster: NodeCluster, path: str) -> bool:
    try:
        cluster.rest.get(path)
    except KubeApiError:
        return False
    return True


def _probe_pod_spec() -> dict[str, Any]:
    return {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "probe",
                "image": probe_image_ref(),
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
                "resources": {"limits": {"memory": "32Mi", "cpu": "100m"}},
            }
        ],
    }


@pytest.fixture
def restricted_namespace(node_cluster: NodeCluster) -> Any:
    name = _namespace(node_cluster, "node-smoke", {"pod-security.kubernetes.io/enforce": "restricted"})
    yield name
    node_cluster.rest.request("DELETE", f"/api/v1/namespaces/{name}")


def test_deployment_behind_service_resolves_and_balances(
    node_cluster: NodeCluster, restricted_namespace: str
) -> None:
    cluster, ns = node_cluster, restricted_namespace
    cluster.import_image(probe_image_archive())
    labels = {"app": "web"}
    cluster.rest.request(
        "POST",
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": _probe_pod_spec()},
            },
        },
    )
    service = cluster.rest.request(
        "POST",
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    pods = wait_pods_ready(cluster, ns, "app=web", 2)
    names = {p["metadata"]["name"] for p in pods}

    # The container runs as the numeric user and cannot write its root filesystem: enforced by runc.
    pod_ip = pods[0]["status"]["podIP"]
    status, body = _http_get(f"http://{pod_ip}:8080/")
    assert status == 200 and body.strip().endswith("uid=10001"), body
    status, body = _http_get(f"http://{pod_ip}:8080/write?path=/probe-was-here")
    assert status == 500 and "read-only file system" in body, (status, body)

    # A client pod in another namespace reaches the Service by its DNS name through kube-proxy.
    client_ns = _namespace(cluster, "node-client", {"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        cluster.rest.request(
            "POST",
            f"/api/v1/namespaces/{client_ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "client", "labels": {"app": "client"}},
                "spec": _probe_pod_spec(),
            },
        )
        client_ip = wait_pods_ready(cluster, client_ns, "app=client", 1)[0]["status"]["podIP"]
        fqdn = f"web.{ns}.svc.cluster.local"
        status, body = _http_get(f"http://{client_ip}:8080/resolve?name={fqdn}")
        assert (status, body.strip()) == (200, service["spec"]["clusterIP"]), body
        seen: set[str] = set()
        for _ in range(40):
            url = urllib.parse.quote(f"http://{fqdn}/", safe="")
            status, body = _http_get(f"http://{client_ip}:8080/fetch?url={url}")
            assert status == 200, body
            seen.add(body.split()[1])
            if seen == names:
                break
        assert seen == names, f"kube-proxy sent every request to {seen}, expected both of {names}"
        # And the kubernetes Service leads pods to the API server (bound on the node IP).
        status, body = _http_get(f"http://{client_ip}:8080/resolve?name=kubernetes.default.svc.cluster.local")
        assert (status, body.strip()) == (200, "10.0.0.1"), body
    finally:
        cluster.rest.request("DELETE", f"/api/v1/namespaces/{client_ns}")

    # kubectl logs/exec-style access goes API server -> kubelet.
    logs = cluster.kubectl("-n", ns, "logs", pods[0]["metadata"]["name"])
    assert "request GET /write" in logs


def test_restricted_namespace_rejects_a_root_pod(
    node_cluster: NodeCluster, restricted_namespace: str
) -> None:
    spec = _probe_pod_spec()
    spec["containers"][0]["securityContext"] = {"runAsUser": 0}
    spec["securityContext"] = {}
    with pytest.raises(KubeApiError) as error:
        node_cluster.rest.request(
            "POST",
            f"/api/v1/namespaces/{restricted_namespace}/pods",
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"}, "spec": spec},
        )
    assert error.value.status == 403 and "violates PodSecurity" in error.value.message
