"""Pod Security `restricted` admits every pod of the operator and of its chart, with fixed IDs and without
(OpenShift's restricted-v2 assigns IDs itself and rejects fixed ones outside the namespace's range).

Pods are created by the real Deployment, ReplicaSet and Job controllers from what the operator applied, so a
rejection would show up exactly as a user sees it: no pod, a FailedCreate event.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank_operator import builders
from rerank_operator.kube import KubeClient
from rerank_operator.reconciler import reconcile
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec
from tests.support.cluster_fixtures import Kubectl
from tests.support.kubelet import KubeApiError, KubeRest
from tests.support.polling import wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[3] / "charts" / "rerank-operator"
API = "/apis/serving.rerank.dev/v1alpha1"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture
def restricted_namespace(kube_rest: KubeRest, namespace: str) -> Iterator[str]:
    """The test's namespace, enforcing Pod Security `restricted`."""
    kube_rest.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": RESTRICTED}},
        content_type="application/merge-patch+json",
    )
    yield namespace


def _pods(kube_rest: KubeRest, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube_rest.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    return items


def _failed_creates(kube_rest: KubeRest, namespace: str) -> list[str]:
    events = kube_rest.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e["message"] for e in events if e["reason"] == "FailedCreate"]


def _wait_for_pods(kube_rest: KubeRest, namespace: str, components: set[str]) -> list[dict[str, Any]]:
    def created() -> list[dict[str, Any]] | None:
        failures = _failed_creates(kube_rest, namespace)
        assert not failures, failures
        pods = _pods(kube_rest, namespace)
        seen = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
        return pods if components <= seen else None

    pods: list[dict[str, Any]] = wait_for(created, 60, f"pods of {sorted(components, key=str)}")
    return pods


def test_restricted_rejects_a_root_pod(kube_rest: KubeRest, restricted_namespace: str) -> None:
    """The namespace really enforces: a pod without the restrictions is refused (the test can fail)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    with pytest.raises(KubeApiError) as refused:
        kube_rest.request("POST", f"/api/v1/namespaces/{restricted_namespace}/pods", pod)
    assert refused.value.status == 403 and 'violates PodSecurity "restricted' in refused.value.message


@pytest.mark.parametrize("run_as_user", ["65532", ""], ids=["fixed-ids", "platform-ids"])
def test_every_operator_pod_is_admitted(
    kube_rest: KubeRest, kube_api: Any, restricted_namespace: str, rerankmodel_crd: str, run_as_user: str
) -> None:
    namespace = restricted_namespace
    body = {
        "apiVersion": "serving.rerank.dev/v1alpha1",
        "kind": "RerankModel",
        "metadata": {"name": "psa"},
        "spec": {
            "source": {"huggingFace": {"repo": "test-org/minilm-reranker", "tokenSecretRef": {"name": "hf"}}},
            "versionPolicy": {"pin": 1},  # the Deployment is applied at once, beside the export Job
            "runtime": {"apiKeySecretRef": {"name": "api-key"}, "replicas": 2},
            "storage": {"accessMode": "ReadWriteMany"},
            "export": {
                "caBundle": {"name": "corporate-ca"},
                "env": [{"name": "HTTPS_PROXY", "value": "http://p:3128"}],
            },
            "networkPolicy": {"enabled": True},
        },
    }
    created = kube_rest.request("POST", f"{API}/namespaces/{namespace}/rerankmodels", body)
    meta = created["metadata"]
    model = ModelIdentity(meta["name"], namespace, meta["uid"], meta["generation"])
    spec = RerankModelSpec.model_validate(created["spec"])
    settings = OperatorSettings(_env_file=None, run_as_user=run_as_user)  # type: ignore[call-arg]
    kube = KubeClient(kube_api, "rerank-operator")
    reconcile(model, spec, {}, settings, kube, logging.getLogger("test"))
    kube.apply(builders.build_promote_job(model, spec, settings, 1))

    pods = _wait_for_pods(kube_rest, namespace, {"runtime", "export", "promote"})
    # The policies beside them are accepted by the API server as built.
    assert (
        kube_rest.get(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/psa")["spec"][
            "maxUnavailable"
        ]
        == 1
    )
    policy = kube_rest.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/psa")
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]
    for pod in pods:
        context = pod["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True
        if run_as_user:
            assert context["runAsUser"] == context["fsGroup"] == 65532
        else:
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context)
    print(f"\n[{run_as_user or 'unset'}] admitted: {sorted(p['metadata']['name'] for p in pods)}")


@pytest.mark.parametrize("openshift", [False, True], ids=["default", "openshift"])
def test_chart_operator_pod_is_admitted(
    kube_rest: KubeRest, kubectl: Kubectl, restricted_namespace: str, openshift: bool
) -> None:
    helm = shutil.which("helm")
    assert helm and os.access(helm, os.X_OK)
    args = [
        "--namespace",
        restricted_namespace,
        "--kube-version",
        "1.34.0",
        "--set",
        f"openshift={openshift}",
    ]
    args += ["--set", f"watchNamespaces={{{restricted_namespace}}}"]
    rendered = subprocess.run(
        [helm, "template", "psa", str(CHART), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    documents = [
        d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("ServiceAccount", "Deployment")
    ]
    kubectl("apply", "-n", restricted_namespace, "-f", "-", input=yaml.safe_dump_all(documents))
    (pod,) = _wait_for_pods(kube_rest, restricted_namespace, {None})
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert ("runAsUser" in context) is not openshift
    env = {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}  # "" is omitted
    assert env["RERANK_OPERATOR_RUN_AS_USER"] == ("" if openshift else "65532")
