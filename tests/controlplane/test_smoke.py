"""Behaviour that only a real control plane has: the operator's tests rely on every one of these."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.controlplane import ControlPlane
from tests.support.kubelet import KubeApiError, KubeRest
from tests.support.polling import wait_for

pytestmark = pytest.mark.cluster

GROUP = "smoke.rerank.test"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer", "default": 1},
                                    "minReplicas": {"type": "integer", "default": 1},
                                    "maxReplicas": {"type": "integer", "default": 3},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": "minReplicas must not exceed maxReplicas",
                                    }
                                ],
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_schema_fills_defaults_and_cel_rule_rejects_bad_objects(
    kube_rest: KubeRest, namespace: str, install_crds: Callable[..., list[str]], tmp_path: Path
) -> None:
    crd_file = tmp_path / "widget-crd.yaml"
    crd_file.write_text(yaml.safe_dump(WIDGET_CRD))
    assert install_crds(crd_file) == [f"widgets.{GROUP}"]
    widgets = f"/apis/{GROUP}/v1/namespaces/{namespace}/widgets"

    created = kube_rest.request(
        "POST",
        widgets,
        {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "plain"}, "spec": {}},
    )
    assert created["spec"] == {"replicas": 1, "minReplicas": 1, "maxReplicas": 3}

    bad = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": "bad"},
        "spec": {"minReplicas": 5},
    }
    with pytest.raises(KubeApiError) as rejected:
        kube_rest.request("POST", widgets, bad)
    assert rejected.value.status == 422
    assert "minReplicas must not exceed maxReplicas" in rejected.value.message
    with pytest.raises(KubeApiError) as missing:
        kube_rest.get(f"{widgets}/bad")
    assert missing.value.status == 404

    wrong_type = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": "typo"},
        "spec": {"replicas": "two"},
    }
    with pytest.raises(KubeApiError) as invalid:
        kube_rest.request("POST", widgets, wrong_type)
    assert invalid.value.status == 422
    assert "spec.replicas" in invalid.value.message


def test_dependent_is_garbage_collected_after_its_owner_is_deleted(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"role": "owner"})
    )
    assert owner.metadata is not None and owner.metadata.uid
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        names = [cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items if cm.metadata]
        return "dependent" not in names

    wait_for(dependent_gone, 30, "the garbage collector to delete the dependent")


def test_deployment_creates_a_replicaset_and_pods(kube_rest: KubeRest, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
            },
        },
    }
    created = kube_rest.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)

    def replica_sets() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = kube_rest.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")[
            "items"
        ]
        return items

    [replica_set] = wait_for(replica_sets, 30, "a ReplicaSet")
    assert replica_set["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

    def pods() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = kube_rest.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        return items if len(items) == 2 else []

    for pod in wait_for(pods, 30, "two pods"):
        assert pod["metadata"]["ownerReferences"][0]["uid"] == replica_set["metadata"]["uid"]
        assert pod["metadata"]["labels"]["app"] == "web"


def test_update_with_stale_resource_version_conflicts(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"), data={"v": "1"})
    )
    first_reader = core.read_namespaced_config_map("settings", namespace)
    second_reader = core.read_namespaced_config_map("settings", namespace)
    first_reader.data = {"v": "2"}
    core.replace_namespaced_config_map("settings", namespace, first_reader)
    second_reader.data = {"v": "3"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("settings", namespace, second_reader)
    assert conflict.value.status == 409
    assert core.read_namespaced_config_map("settings", namespace).data == {"v": "2"}


def test_service_account_without_rights_is_forbidden(
    kube_rest: KubeRest, namespace: str, impersonate: Callable[[str, str], Any]
) -> None:
    as_reader = client.CoreV1Api(impersonate("reader", namespace))
    with pytest.raises(ApiException) as forbidden:
        as_reader.list_namespaced_config_map(namespace)
    assert forbidden.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in str(forbidden.value.body)

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }
    kube_rest.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", role)
    kube_rest.request(
        "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", binding
    )
    # The same identity may list once bound; the authorizer reads RBAC through an informer cache, so the new
    # binding takes effect within moments, not synchronously. Other verbs stay forbidden.
    deadline = time.monotonic() + 15
    while True:
        try:
            assert as_reader.list_namespaced_config_map(namespace).items is not None
            break
        except ApiException as error:
            if error.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with pytest.raises(ApiException) as still_forbidden:
        as_reader.delete_namespaced_config_map("kube-root-ca.crt", namespace)
    assert still_forbidden.value.status == 403


def test_helm_installs_a_chart(
    control_plane: ControlPlane, namespace: str, kube_rest: KubeRest, tmp_path: Path
) -> None:
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>=1.33.0-0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
        "  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    install = subprocess.run(
        ["helm", "install", "smoke", str(chart), "--namespace", namespace, "--set", "greeting=hi", "--wait"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr
    config_map = kube_rest.get(f"/api/v1/namespaces/{namespace}/configmaps/smoke-config")
    assert config_map["data"] == {"greeting": "hi", "kube": "v1.34.4"}
    releases = json.loads(
        subprocess.run(
            ["helm", "list", "--namespace", namespace, "--output", "json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [(r["name"], r["status"]) for r in releases] == [("smoke", "deployed")]
    # Client-only rendering has no server to ask: the kubeVersion constraint needs --kube-version.
    template = subprocess.run(
        ["helm", "template", "smoke", str(chart), "--kube-version", "1.34.4"], capture_output=True, text=True
    )
    assert template.returncode == 0, template.stderr
    assert 'kube: "v1.34.4"' in template.stdout
