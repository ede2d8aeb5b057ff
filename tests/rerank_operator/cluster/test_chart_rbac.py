"""The chart's RBAC lets the operator do everything a reconcile does, and no more than its rules say."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank_operator.kube import KubeClient
from rerank_operator.reconciler import reconcile
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec
from tests.rerank_operator.cluster.test_lifecycle import API
from tests.support.cluster_fixtures import Kubectl
from tests.support.kubelet import KubeRest

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[3] / "charts" / "rerank-operator"


def test_operator_service_account_can_reconcile(
    kube_rest: KubeRest,
    kubectl: Kubectl,
    namespace: str,
    rerankmodel_crd: str,
    impersonate: Callable[[str, str], Any],
) -> None:
    helm = shutil.which("helm")
    assert helm and os.access(helm, os.X_OK)
    rendered = subprocess.run(
        [
            helm,
            "template",
            "rbac-test",
            "--kube-version",
            "1.34.0",
            str(CHART),
            "--namespace",
            namespace,
            "--set",
            f"watchNamespaces={{{namespace}}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rbac = [
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] in ("Role", "RoleBinding", "ServiceAccount")
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    account = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")

    body = {
        "apiVersion": "serving.rerank.dev/v1alpha1",
        "kind": "RerankModel",
        "metadata": {"name": "rbac"},
        "spec": {
            "source": {"huggingFace": {"repo": "test-org/minilm-reranker"}},
            "versionPolicy": {
                "pin": 1
            },  # pinned: the Deployment, Service and a promote Job are applied at once
            "autoscaling": {"maxReplicas": 2},
            "storage": {"accessMode": "ReadWriteMany"},
        },
    }
    created = kube_rest.request("POST", f"{API}/namespaces/{namespace}/rerankmodels", body)
    meta = created["metadata"]
    model = ModelIdentity(meta["name"], namespace, meta["uid"], meta["generation"])
    kube = KubeClient(impersonate(account, namespace), "rerank-operator")
    status = reconcile(
        model,
        RerankModelSpec.model_validate(created["spec"]),
        {},
        OperatorSettings(),
        kube,
        logging.getLogger("test"),
    )
    assert status["phase"] == "Exporting" and status["desiredVersion"] == 1
    stored = kube_rest.get(f"{API}/namespaces/{namespace}/rerankmodels/rbac")["status"]
    assert stored["observedGeneration"] == meta["generation"]
    for kind in ("deployments", "services", "horizontalpodautoscalers", "jobs", "persistentvolumeclaims"):
        names = kubectl("get", kind, "-n", namespace, "-o", "name").split()
        assert names, f"the operator's ServiceAccount created no {kind}"
    events = kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=rbac", "-o", "name"
    )
    assert events.strip()
    # ...and nothing beyond its namespace: the Role does not reach other namespaces.
    denied = kubectl(
        "auth",
        "can-i",
        "list",
        "jobs",
        "-n",
        "kube-system",
        f"--as=system:serviceaccount:{namespace}:{account}",
        check=False,
    )
    assert denied.strip() == "no"
