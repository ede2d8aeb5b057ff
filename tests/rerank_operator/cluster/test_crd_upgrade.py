"""`helm upgrade` delivers CRD changes, and `helm uninstall` keeps the CRD (real Helm, real API server).

The CRD is cluster-wide and the session's tests use the real one, so this test renames the chart's CRD to a
group of its own (same schema, same template mechanism) and leaves it behind: deleting a CRD stalls the
garbage collector until its next discovery pass.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kubelet import KubeApiError, KubeRest
from tests.support.polling import wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[3] / "charts" / "rerank-operator"
CRD_FILE = Path("files") / "rerankmodel.yaml"


def _chart_copy(destination: Path, group: str, *, without_shutdown_delay: bool) -> Path:
    """The chart with its CRD moved to `group`; the "old" release lacks runtime.shutdownDelaySeconds."""
    shutil.copytree(CHART, destination)
    crd = yaml.safe_load((destination / CRD_FILE).read_text())
    crd["metadata"]["name"] = f"rerankmodels.{group}"
    crd["spec"]["group"] = group
    runtime = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "runtime"
    ]
    if without_shutdown_delay:
        del runtime["properties"]["shutdownDelaySeconds"]
    (destination / CRD_FILE).write_text(yaml.safe_dump(crd, sort_keys=False))
    return destination


def _helm(*args: str) -> str:
    helm = shutil.which("helm")
    assert helm
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


def _model(group: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1alpha1",
        "kind": "RerankModel",
        "metadata": {"name": name},
        "spec": {
            "source": {"huggingFace": {"repo": "test-org/minilm-reranker"}},
            "runtime": {"shutdownDelaySeconds": 20},
        },
    }


def _created_delay(kube_rest: KubeRest, group: str, namespace: str, name: str) -> Any:
    path = f"/apis/{group}/v1alpha1/namespaces/{namespace}/rerankmodels"

    def create() -> dict[str, Any] | None:
        try:
            created: dict[str, Any] = kube_rest.request("POST", path, _model(group, name))
        except KubeApiError as error:  # 404 until the new schema's REST endpoint serves
            if error.status == 404:
                return None
            raise
        return created

    created = wait_for(create, 30, f"{group} RerankModels to be served")
    return created["spec"]["runtime"].get("shutdownDelaySeconds")


def test_helm_upgrade_delivers_a_new_crd_field(kube_rest: KubeRest, namespace: str, tmp_path: Path) -> None:
    group = f"u{secrets.token_hex(4)}.upgrade.test.rerank.dev"
    old = _chart_copy(tmp_path / "old", group, without_shutdown_delay=True)
    new = _chart_copy(tmp_path / "new", group, without_shutdown_delay=False)
    release = f"crd-{secrets.token_hex(3)}"
    common = ["--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}"]

    _helm("install", release, str(old), *common)
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rerankmodels.{group}"
    assert kube_rest.get(crd_path)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The old schema does not know the field: the API server prunes it.
    assert _created_delay(kube_rest, group, namespace, "before") is None

    _helm("upgrade", release, str(new), *common)

    def upgraded() -> bool:
        schema = kube_rest.get(crd_path)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        runtime = schema["properties"]["spec"]["properties"]["runtime"]["properties"]
        return "shutdownDelaySeconds" in runtime

    wait_for(upgraded, 30, "the upgraded CRD schema")
    # Until every API server handler has the new schema a create may still prune: retry with a new name.
    kept = wait_for(
        lambda: _created_delay(kube_rest, group, namespace, f"after-{secrets.token_hex(2)}"),
        30,
        "runtime.shutdownDelaySeconds to be kept",
    )
    assert kept == 20
    print(f"\n[crd-upgrade] {group}: runtime.shutdownDelaySeconds kept after helm upgrade")

    _helm("uninstall", release, "--namespace", namespace)
    crd = kube_rest.get(crd_path)  # kept: uninstalling must not delete every RerankModel with it
    assert crd["metadata"].get("deletionTimestamp") is None
    items = kube_rest.get(f"/apis/{group}/v1alpha1/namespaces/{namespace}/rerankmodels")["items"]
    assert "before" in [i["metadata"]["name"] for i in items]
