"""Run the operator as the chart's ServiceAccount and compare what it did (API server audit log) with the
chart's RBAC rules: everything used is granted, and everything granted is used or justified in the chart.

Justifications live in charts/rerank-operator/templates/rbac.yaml as comment lines
``# unused-by-e2e: <verb> <group>/<resource>: <why>`` (group ``core`` for the core API group).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.kubelet import KubeApiError, KubeRest

CHART = Path(__file__).resolve().parents[3] / "charts" / "rerank-operator"
JUSTIFICATION = re.compile(r"#\s*unused-by-e2e:\s*(\S+)\s+([^/\s]+)/(\S+?):\s+(.+)$")

Permission = tuple[str, str, str]  # (verb, API group, resource[/subresource])


@dataclass
class OperatorIdentity:
    """The chart's ServiceAccount installed with its RBAC for one namespace, and a kubeconfig for it."""

    namespace: str
    service_account: str
    kubeconfig: Path
    rules: list[dict[str, Any]]
    cluster_objects: list[tuple[str, str]]  # (collection path, name) to delete afterwards

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def granted(self) -> set[Permission]:
        """Every (verb, group, resource) the rendered Role and ClusterRoles grant."""
        return {
            (verb, group or "core", resource)
            for rule in self.rules
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])
        }


def install_operator_identity(
    kube_rest: KubeRest, namespace: str, server: str, ca_file: Path, out: Path
) -> OperatorIdentity:
    """helm template the chart's RBAC for `namespace` (namespaced mode), apply it, mint a token."""
    helm = shutil.which("helm")
    assert helm
    release = f"e2e-{secrets.token_hex(3)}"
    args = ["--namespace", namespace, "--kube-version", "1.34.0", "--set", f"watchNamespaces={{{namespace}}}"]
    rendered = subprocess.run(
        [helm, "template", release, str(CHART), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    rules: list[dict[str, Any]] = []
    cluster_objects: list[tuple[str, str]] = []
    service_account = ""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    for doc in documents:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ServiceAccount":
            service_account = name
            kube_rest.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", doc)
        elif kind in ("Role", "RoleBinding"):
            plural = "roles" if kind == "Role" else "rolebindings"
            kube_rest.request("POST", f"{rbac}/namespaces/{doc['metadata']['namespace']}/{plural}", doc)
            rules += doc.get("rules") or []
        elif kind in ("ClusterRole", "ClusterRoleBinding"):
            plural = "clusterroles" if kind == "ClusterRole" else "clusterrolebindings"
            kube_rest.request("POST", f"{rbac}/{plural}", doc)
            cluster_objects.append((f"{rbac}/{plural}", name))
            rules += doc.get("rules") or []
    token = kube_rest.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200},
        },
    )["status"]["token"]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [
            {"name": "operator", "context": {"cluster": "test", "user": "operator", "namespace": namespace}}
        ],
        "current-context": "operator",
    }
    out.write_text(yaml.safe_dump(kubeconfig))
    return OperatorIdentity(namespace, service_account, out, rules, cluster_objects)


def remove_cluster_objects(kube_rest: KubeRest, identity: OperatorIdentity) -> None:
    """Delete the identity's ClusterRole and ClusterRoleBinding (namespaced objects go with the namespace)."""
    for collection, name in identity.cluster_objects:
        try:
            kube_rest.request("DELETE", f"{collection}/{name}")
        except KubeApiError as error:
            if error.status != 404:
                raise


def audited_requests(audit_log: Path, username: str) -> list[dict[str, Any]]:
    """Every audit event of `username`."""
    events = []
    for line in audit_log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        # Watches log ResponseStarted (they may never complete while the test runs); sets dedupe the rest.
        if event.get("user", {}).get("username") == username and event.get("stage") != "RequestReceived":
            events.append(event)
    return events


def used_permissions(events: Iterable[dict[str, Any]]) -> tuple[set[Permission], set[Permission]]:
    """(allowed, denied) (verb, group, resource) of resource requests (non-resource URLs like /version and
    discovery are open to every authenticated user and need no rule)."""
    allowed: set[Permission] = set()
    denied: set[Permission] = set()
    for event in events:
        ref = event.get("objectRef")
        if not ref or not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        permission = (event["verb"], ref.get("apiGroup") or "core", resource)
        code = (event.get("responseStatus") or {}).get("code", 0)
        (denied if code == 403 else allowed).add(permission)
    return allowed, denied


def justified_unused() -> dict[Permission, str]:
    """The chart's justified exceptions: granted permissions the e2e does not exercise, with the reason."""
    found: dict[Permission, str] = {}
    for line in (CHART / "templates" / "rbac.yaml").read_text().splitlines():
        if match := JUSTIFICATION.search(line):
            verb, group, resource, why = match.groups()
            found[(verb, group, resource)] = why
    return found


def format_permissions(permissions: Iterable[Permission]) -> str:
    return ", ".join(f"{verb} {group}/{resource}" for verb, group, resource in sorted(permissions)) or "none"
