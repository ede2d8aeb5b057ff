"""The operator's Helm chart: renders, secure by default, names bounded, values documented and validated."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import binaries_dir

CHART = Path(__file__).resolve().parents[2] / "charts" / "rerank-operator"


@pytest.fixture(scope="module")
def helm() -> str:
    found = shutil.which("helm") or str(binaries_dir() / "helm")
    if not os.access(found, os.X_OK):
        pytest.skip("helm is not built yet (make control-plane)")
    return found


def _template(helm: str, *args: str, release: str = "rerank") -> list[dict[str, Any]]:
    result = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", "ops", "--kube-version", "1.34.0", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_passes(helm: str) -> None:
    subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, check=True)


def test_defaults_are_secure_and_cluster_wide(helm: str) -> None:
    docs = _template(helm)
    deployment = _kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"] == ["--standalone", "--all-namespaces"]
    assert pod["serviceAccountName"] == "rerank-rerank-operator"
    roles = {r["metadata"]["name"]: r for r in _kind(docs, "ClusterRole")}
    rules = roles["rerank-rerank-operator"]["rules"]
    assert {
        "apiGroups": ["serving.rerank.dev"],
        "resources": ["rerankmodels/status"],
        "verbs": ["patch"],
    } in rules
    assert not _kind(docs, "Role")


def test_watch_namespaces_use_namespaced_roles(helm: str) -> None:
    docs = _template(helm, "--set", "watchNamespaces={team-a,team-b}")
    assert sorted(r["metadata"]["namespace"] for r in _kind(docs, "Role")) == ["team-a", "team-b"]
    assert [r["metadata"]["name"] for r in _kind(docs, "ClusterRole")] == ["rerank-rerank-operator-discovery"]
    args = _kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--standalone", "--namespace=team-a", "--namespace=team-b"]


def test_names_are_truncated_to_63_characters(helm: str) -> None:
    docs = _template(helm, release="r" * 53)
    names = [d["metadata"]["name"] for d in docs]
    assert names and all(len(n) <= 63 and not n.endswith("-") for n in names)


def test_schema_rejects_bad_values(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "r", str(CHART), "--set", "operator.pvcDeletePolicy=Sometimes"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "pvcDeletePolicy" in result.stderr


def test_every_value_is_documented() -> None:
    """Each leaf value has a `# --` comment, on itself or on an enclosing key (e.g. `resources`)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of enclosing keys
    undocumented = []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        ancestors = [a for a in ancestors if a[0] < indent]
        # The comment block right above the key (helm-docs: `# -- text` plus continuation lines).
        above = index - 1
        while (
            above >= 0
            and lines[above].strip().startswith("#")
            and not lines[above].strip().startswith("# --")
        ):
            above -= 1
        previous = lines[above].strip() if above >= 0 else ""
        documented = previous.startswith("# --") or any(doc for _, doc in ancestors)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        is_group = not match.group(3).strip() and len(following) - len(following.lstrip()) > indent
        if not is_group and not documented:
            undocumented.append(line.strip())
        ancestors.append((indent, documented))
    assert undocumented == []


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = _kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_openshift_leaves_ids_to_the_platform(helm: str) -> None:
    default = _template(helm)
    pod = _kind(default, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert _env(default)["RERANK_OPERATOR_RUN_AS_USER"] == "65532"

    openshift = _template(helm, "--set", "openshift=true")
    pod = _kind(openshift, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert _env(openshift)["RERANK_OPERATOR_RUN_AS_USER"] == ""  # and so for every pod the operator creates
    unset = _template(helm, "--set", "operator.runAsUser=null")
    assert _env(unset)["RERANK_OPERATOR_RUN_AS_USER"] == ""


def test_workload_defaults_reach_the_operator(helm: str) -> None:
    env = _env(
        _template(
            helm,
            "--set",
            "operator.imagePullSecrets={registry-a,registry-b}",
            "--set",
            "operator.runtimeServiceAccount=serve",
            "--set",
            "operator.exportServiceAccount=exporter",
            "--set",
            "operator.exportCacheSize=40Gi",
            "--set",
            "operator.runtimeShutdownDelay=15",
        )
    )
    assert env["RERANK_OPERATOR_IMAGE_PULL_SECRETS"] == "registry-a,registry-b"
    assert env["RERANK_OPERATOR_RUNTIME_SERVICE_ACCOUNT"] == "serve"
    assert env["RERANK_OPERATOR_EXPORT_SERVICE_ACCOUNT"] == "exporter"
    assert env["RERANK_OPERATOR_EXPORT_CACHE_SIZE"] == "40Gi"
    assert env["RERANK_OPERATOR_RUNTIME_SHUTDOWN_DELAY"] == "15"
    bad = subprocess.run(
        [helm, "template", "r", str(CHART), "--set", "operator.exportCacheSize=lots"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "exportCacheSize" in bad.stderr


def test_network_policies_are_off_by_default(helm: str) -> None:
    docs = _template(helm)
    assert not _kind(docs, "NetworkPolicy")
    assert _env(docs)["RERANK_OPERATOR_NETWORK_POLICY"] == "false"


def test_operator_network_policy_allows_exactly_its_traffic(helm: str) -> None:
    docs = _template(helm, "--set", "networkPolicy.enabled=true", "--set", "networkPolicy.models=true")
    (policy,) = _kind(docs, "NetworkPolicy")
    pod_labels = _kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == pod_labels
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]  # liveness only
    dns, api, runtime = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert [p["port"] for p in api["ports"]] == [443, 6443]
    assert runtime["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert runtime["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "rerank-model",
        "app.kubernetes.io/component": "runtime",
    }
    env = _env(docs)
    assert env["RERANK_OPERATOR_NETWORK_POLICY"] == "true"
    assert env["RERANK_OPERATOR_OPERATOR_NAMESPACE"] == "ops"
    # The per-model policies admit the operator by exactly the labels its pods carry.
    named = dict(pair.split("=", 1) for pair in env["RERANK_OPERATOR_OPERATOR_POD_LABELS"].split(","))
    assert named == pod_labels


def test_crd_is_a_kept_template_equal_to_the_source(helm: str) -> None:
    docs = _template(helm)
    (crd,) = _kind(docs, "CustomResourceDefinition")
    source = yaml.safe_load((CHART.parents[1] / "crds" / "rerankmodel.yaml").read_text())
    assert crd == source
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not (CHART / "crds").exists(), "Helm would install crds/ once and never upgrade it"
    assert not _kind(_template(helm, "--set", "crds.install=false"), "CustomResourceDefinition")


def test_default_images_are_where_the_release_workflow_publishes(helm: str) -> None:
    from rerank_operator.settings import OperatorSettings

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    workflow = yaml.safe_load((CHART.parents[1] / ".github" / "workflows" / "release.yml").read_text())
    published = {entry["image"] for entry in workflow["jobs"]["images"]["strategy"]["matrix"]["include"]}
    assert published == {"rerank-runtime", "rerank-export", "rerank-operator"}
    owner = "rerank-operator"  # github.repository_owner of the project's home, lower-cased by the workflow
    expected = {name: f"ghcr.io/{owner}/{name}:{chart['appVersion']}" for name in published}

    deployment = _kind(_template(helm), "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert container["image"] == expected["rerank-operator"]
    assert env["RERANK_OPERATOR_RUNTIME_IMAGE"] == expected["rerank-runtime"]
    assert env["RERANK_OPERATOR_EXPORT_IMAGE"] == expected["rerank-export"]
    settings = OperatorSettings()
    assert settings.runtime_image == expected["rerank-runtime"]
    assert settings.export_image == expected["rerank-export"]
