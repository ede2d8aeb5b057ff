"""Policies around the runtime pods: PodDisruptionBudget and the optional ingress NetworkPolicy."""

from __future__ import annotations

from typing import Any

from rerank_operator.builders.pod import owned_metadata
from rerank_operator.naming import child_name, common_labels, runtime_selector
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec

DEFAULT_OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "rerank-operator"}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def max_replicas(spec: RerankModelSpec) -> int:
    """The most runtime pods the spec can ask for (autoscaling's upper bound, else replicas)."""
    if spec.autoscaling is not None:
        return spec.autoscaling.max_replicas
    return spec.runtime.replicas


def build_pdb(model: ModelIdentity, spec: RerankModelSpec) -> dict[str, Any] | None:
    """At most one runtime pod voluntarily disrupted at a time (drains, node upgrades), when there can be
    more than one; a single replica gets none, since a budget of zero would block every node drain."""
    if max_replicas(spec) <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owned_metadata(model, child_name(model), common_labels(model, "runtime")),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": runtime_selector(model)},
            # A pod that never became ready (crash loop, bad image) may always be evicted.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def network_policy_enabled(spec: RerankModelSpec, settings: OperatorSettings) -> bool:
    """spec.networkPolicy.enabled, else the operator's default."""
    if spec.network_policy.enabled is not None:
        return spec.network_policy.enabled
    return settings.network_policy


def build_network_policy(
    model: ModelIdentity, spec: RerankModelSpec, settings: OperatorSettings
) -> dict[str, Any] | None:
    """Ingress to the runtime pods' HTTP port only from the clients (spec.networkPolicy.from, default the
    RerankModel's namespace) and from the operator's pods (they ask each pod what it serves).

    Egress is not restricted: runtime pods make no connections, and export Jobs (not selected) must reach
    the hub or its proxy. Kubelet probes are node traffic, which NetworkPolicy implementations allow.
    """
    if not network_policy_enabled(spec, settings):
        return None
    operator_peer: dict[str, Any] = {
        "podSelector": {"matchLabels": dict(settings.operator_pod_labels or DEFAULT_OPERATOR_POD_LABELS)},
        "namespaceSelector": (
            {"matchLabels": {NAMESPACE_NAME_LABEL: settings.operator_namespace}}
            if settings.operator_namespace
            else {}
        ),
    }
    clients = [dict(peer) for peer in spec.network_policy.from_] or [{"podSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owned_metadata(model, child_name(model), common_labels(model, "runtime")),
        "spec": {
            "podSelector": {"matchLabels": runtime_selector(model)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [operator_peer, *clients],
                    "ports": [{"protocol": "TCP", "port": settings.runtime_port}],
                }
            ],
        },
    }
