"""Invalid RerankModels are rejected by the API server with the CRD's own message (no operator involved)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster_fixtures import Kubectl
from tests.support.kubelet import KubeApiError, KubeRest

pytestmark = pytest.mark.cluster

VALID: dict[str, Any] = {"source": {"huggingFace": {"repo": "test-org/minilm-reranker"}}}
HUB = {"huggingFace": {"repo": "test-org/minilm-reranker"}}

# (case, spec, fragment of the message the user sees)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-source", {"source": {}}, "exactly one of source.huggingFace or source.localPath must be set"),
    (
        "two-sources",
        {"source": {**HUB, "localPath": "m"}, "servedName": "m"},
        "exactly one of source.huggingFace",
    ),
    (
        "repo-id-format",
        {"source": {"huggingFace": {"repo": "not a repo!"}}},
        "must be a Hugging Face repository id",
    ),
    ("repo-id-too-long", {"source": {"huggingFace": {"repo": "o/" + "m" * 220}}}, "Too long"),
    (
        "revision-format",
        {"source": {"huggingFace": {"repo": "o/m", "revision": "main; rm -rf"}}},
        "revision must be a branch, tag or commit sha",
    ),
    (
        "local-path-escapes",
        {"source": {"localPath": "../../etc"}, "servedName": "m"},
        "source.localPath must be a non-empty path relative to the model volume",
    ),
    (
        "local-path-needs-name",
        {"source": {"localPath": "uploads/m"}},
        "servedName is required with source.localPath",
    ),
    ("served-name-format", {**VALID, "servedName": "a/b/c"}, "servedName must be 1-128 characters"),
    ("weight-format-enum", {**VALID, "export": {"weightFormat": "q4"}}, 'Unsupported value: "q4"'),
    ("max-length-range", {**VALID, "export": {"maxLength": 8}}, "greater than or equal to 16"),
    ("precision-enum", {**VALID, "runtime": {"precision": "fp8"}}, 'Unsupported value: "fp8"'),
    (
        "pin-positive",
        {**VALID, "versionPolicy": {"pin": 0}},
        "versionPolicy.pin must be a positive version number",
    ),
    ("keep-at-least-one", {**VALID, "versionPolicy": {"keep": 0}}, "versionPolicy.keep must be at least 1"),
    (
        "min-above-max-replicas",
        {**VALID, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas",
    ),
    ("replicas-bound", {**VALID, "runtime": {"replicas": 500}}, "less than or equal to 100"),
    (
        "claim-and-class",
        {**VALID, "storage": {"existingClaim": "shared", "storageClassName": "fast"}},
        "storage.storageClassName cannot be combined with storage.existingClaim",
    ),
    (
        "delete-existing-claim",
        {**VALID, "storage": {"existingClaim": "shared", "deletePolicy": "Delete"}},
        "storage.deletePolicy Delete applies only to a claim the operator creates",
    ),
    (
        "spread-on-read-write-once",
        {**VALID, "runtime": {"replicas": 3, "placement": "Spread"}},
        "runtime.placement Spread needs storage.accessMode ReadWriteMany",
    ),
    ("size-quantity", {**VALID, "storage": {"size": "ten gigs"}}, "storage.size must be a quantity"),
    (
        "replicas-on-read-write-once",
        {**VALID, "runtime": {"replicas": 2}},
        "more than one runtime replica with storage.accessMode ReadWriteOnce puts every replica",
    ),
    (
        "autoscaling-on-read-write-once",
        {**VALID, "autoscaling": {"maxReplicas": 4}},
        "use storage.accessMode ReadWriteMany, or set runtime.placement Colocated",
    ),
    (
        "export-duplicate-env",
        {**VALID, "export": {"env": [{"name": "HTTPS_PROXY", "value": "a"}, {"name": "HTTPS_PROXY"}]}},
        "export.env must not list the same variable name twice",
    ),
    (
        "cache-size-quantity",
        {**VALID, "export": {"cacheSize": "lots"}},
        "export.cacheSize must be a quantity",
    ),
    (
        "service-account-name",
        {**VALID, "runtime": {"serviceAccountName": "Not_Valid"}},
        "runtime.serviceAccountName must be a valid ServiceAccount name",
    ),
    (
        "shutdown-delay-bound",
        {**VALID, "runtime": {"shutdownDelaySeconds": 900}},
        "less than or equal to 300",
    ),
    (
        "duplicate-env",
        {**VALID, "runtime": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
        "runtime.env must not list the same variable name twice",
    ),
    (
        "token-secret-name",
        {"source": {"huggingFace": {"repo": "o/m", "tokenSecretRef": {"name": "Bad_Name"}}}},
        "tokenSecretRef.name must be a valid Secret name",
    ),
]

# (case, spec at creation, changed spec, fragment)
INVALID_UPDATES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "access-mode-immutable",
        VALID,
        {**VALID, "storage": {"accessMode": "ReadWriteMany"}},
        "storage.accessMode cannot be changed after creation",
    ),
    (
        "existing-claim-immutable",
        VALID,
        {**VALID, "storage": {"existingClaim": "other"}},
        "storage.existingClaim cannot be changed after creation",
    ),
]


@pytest.fixture(scope="module")
def admission_namespace(kube_rest: KubeRest, rerankmodel_crd: str) -> Iterator[str]:
    name = "rrm-admission"
    kube_rest.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    kube_rest.request("DELETE", f"/api/v1/namespaces/{name}")


def _collection(namespace: str) -> str:
    return f"/apis/serving.rerank.dev/v1alpha1/namespaces/{namespace}/rerankmodels"


def _body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.rerank.dev/v1alpha1",
        "kind": "RerankModel",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.parametrize(("case", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_with_its_message(
    kube_rest: KubeRest, admission_namespace: str, case: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(KubeApiError) as rejected:
        kube_rest.request("POST", _collection(admission_namespace), _body(case, spec))
    assert rejected.value.status == 422
    assert message in rejected.value.message
    print(f"\n[{case}] {rejected.value.message}")
    listed = kube_rest.get(_collection(admission_namespace))["items"]
    assert case not in [item["metadata"]["name"] for item in listed]  # nothing stored, nothing to reconcile


@pytest.mark.parametrize(
    ("case", "created", "changed", "message"), INVALID_UPDATES, ids=[c[0] for c in INVALID_UPDATES]
)
def test_immutable_fields_reject_changes(
    kube_rest: KubeRest,
    admission_namespace: str,
    case: str,
    created: dict[str, Any],
    changed: dict[str, Any],
    message: str,
) -> None:
    stored = kube_rest.request("POST", _collection(admission_namespace), _body(case, created))
    update = copy.deepcopy(stored)
    update["spec"] = {**stored["spec"], **copy.deepcopy(changed)}
    with pytest.raises(KubeApiError) as rejected:
        kube_rest.request("PUT", f"{_collection(admission_namespace)}/{case}", update)
    assert rejected.value.status == 422
    assert message in rejected.value.message
    print(f"\n[{case}] {rejected.value.message}")
    current = kube_rest.get(f"{_collection(admission_namespace)}/{case}")
    assert current["spec"]["storage"] == stored["spec"]["storage"]


def test_valid_spec_gets_the_documented_defaults(kube_rest: KubeRest, admission_namespace: str) -> None:
    stored = kube_rest.request("POST", _collection(admission_namespace), _body("defaults", VALID))
    spec = stored["spec"]
    assert spec["export"] == {"weightFormat": "int8", "timeoutSeconds": 3600, "backoffLimit": 2}
    assert spec["runtime"] == {"replicas": 1, "precision": "auto"}
    assert spec["storage"] == {"size": "10Gi", "accessMode": "ReadWriteOnce"}
    assert spec["service"] == {"type": "ClusterIP", "port": 8000}
    assert spec["versionPolicy"] == {"keep": 3}


def test_scale_subresource_and_printer_columns(
    kube_rest: KubeRest, admission_namespace: str, kubectl: Kubectl
) -> None:
    shared = {**VALID, "storage": {"accessMode": "ReadWriteMany"}}
    kube_rest.request("POST", _collection(admission_namespace), _body("scaled", shared))
    kubectl("scale", "rrm/scaled", "--replicas=3", "-n", admission_namespace)
    assert kube_rest.get(f"{_collection(admission_namespace)}/scaled")["spec"]["runtime"]["replicas"] == 3
    # One ReadWriteOnce volume cannot back replicas on several nodes: scaling is refused, with the reason.
    kube_rest.request("POST", _collection(admission_namespace), _body("single", VALID))
    with pytest.raises(KubeApiError) as refused:
        kube_rest.request(
            "PATCH",
            f"{_collection(admission_namespace)}/single/scale",
            {"spec": {"replicas": 3}},
            content_type="application/merge-patch+json",
        )
    assert "storage.accessMode ReadWriteOnce" in refused.value.message
    assert kube_rest.get(f"{_collection(admission_namespace)}/single")["spec"]["runtime"]["replicas"] == 1
    header = kubectl("get", "rrm", "scaled", "-n", admission_namespace).splitlines()[0].split()
    assert header == ["NAME", "PHASE", "SERVING", "LATEST", "READY", "AGE"]
