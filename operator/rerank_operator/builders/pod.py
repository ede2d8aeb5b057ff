"""Pod-level pieces shared by Jobs and the runtime Deployment: security, placement, volumes."""

from __future__ import annotations

from typing import Any

from rerank_operator.naming import CLAIM_LABEL, runtime_selector
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec

MODELS_VOLUME = "models"
MODELS_MOUNT = "/models"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"


def owned_metadata(model: ModelIdentity, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """Metadata of a child the RerankModel controls: garbage-collected with it."""
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": labels,
        "ownerReferences": [model.owner_reference()],
    }


def pod_security_context(settings: OperatorSettings) -> dict[str, Any]:
    """Non-root pod; fsGroup lets the non-root user write the model volume (Jobs only write)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "fsGroup": settings.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Least privilege for every container: read-only root FS, no privilege escalation, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def claim_volume(claim: str, *, read_only: bool) -> dict[str, Any]:
    """The repository volume."""
    return {"name": MODELS_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def empty_dir(name: str) -> dict[str, Any]:
    """Scratch space, since the root filesystem is read-only."""
    return {"name": name, "emptyDir": {}}


def affinity(
    model: ModelIdentity, spec: RerankModelSpec, claim: str, *, runtime: bool
) -> dict[str, Any] | None:
    """Co-location on the volume's node (ReadWriteOnce) or spreading of runtime replicas (ReadWriteMany).

    Every pod that mounts the claim carries CLAIM_LABEL; requiring affinity to that label on the hostname
    topology puts all of them on the node of the first one (a pod may match its own term, so the first pod
    schedules freely).
    """
    if spec.colocated:
        return {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {CLAIM_LABEL: claim}}, "topologyKey": HOSTNAME_TOPOLOGY}
                ]
            }
        }
    if not runtime:
        return None
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": runtime_selector(model)},
                        "topologyKey": HOSTNAME_TOPOLOGY,
                    },
                }
            ]
        }
    }


def resources(
    given: dict[str, Any] | None, cpu_request: str, memory_request: str, memory_limit: str
) -> dict[str, Any]:
    """The spec's ResourceRequirements, or the operator's defaults (no CPU limit: avoids throttling)."""
    if given:
        return {key: dict(value) for key, value in given.items() if value}
    return {"requests": {"cpu": cpu_request, "memory": memory_request}, "limits": {"memory": memory_limit}}


def placement_fields(
    model: ModelIdentity, spec: RerankModelSpec, claim: str, *, runtime: bool
) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity of a pod spec (only the ones that are set)."""
    fields: dict[str, Any] = {}
    if spec.runtime.node_selector:
        fields["nodeSelector"] = dict(spec.runtime.node_selector)
    if spec.runtime.tolerations:
        fields["tolerations"] = [dict(t) for t in spec.runtime.tolerations]
    pod_affinity = affinity(model, spec, claim, runtime=runtime)
    if pod_affinity is not None:
        fields["affinity"] = pod_affinity
    return fields
