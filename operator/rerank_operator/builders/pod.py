"""Pod-level pieces shared by Jobs and the runtime Deployment: security, placement, volumes."""

from __future__ import annotations

from typing import Any

from rerank_operator.naming import CLAIM_LABEL, runtime_selector
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import LocalObjectReference, ModelIdentity, RerankModelSpec

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
    """Non-root pod that passes Pod Security `restricted`; fsGroup lets the non-root user write the volume.

    Without a configured UID the IDs are left to the platform: OpenShift's restricted-v2 SCC rejects fixed
    IDs outside the namespace's range and assigns UID and fsGroup itself.
    """
    context: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if settings.run_as_user is not None:
        context.update(
            runAsUser=settings.run_as_user, runAsGroup=settings.run_as_user, fsGroup=settings.run_as_user
        )
    return context


def pod_identity(
    settings: OperatorSettings,
    *,
    service_account: str | None,
    pull_secrets: list[LocalObjectReference] | None,
    default_service_account: str | None,
) -> dict[str, Any]:
    """serviceAccountName and imagePullSecrets of a pod: the spec's, else the operator's defaults."""
    fields: dict[str, Any] = {}
    account = service_account or default_service_account
    if account:
        fields["serviceAccountName"] = account
    names = [s.name for s in pull_secrets] if pull_secrets is not None else settings.image_pull_secrets
    if names:
        fields["imagePullSecrets"] = [{"name": name} for name in names]
    return fields


def container_security_context() -> dict[str, Any]:
    """Least privilege for every container: read-only root FS, no privilege escalation, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def merged_env(defaults: list[dict[str, Any]], given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's variables, each replaced by the spec's variable of the same name, then the rest.

    Server-side apply refuses a list with two entries of one name, so overrides replace, never repeat.
    """
    given_by_name = {item["name"]: dict(item) for item in given}
    merged = [given_by_name.pop(item["name"], item) for item in defaults]
    return merged + [item for item in (dict(i) for i in given) if item["name"] in given_by_name]


def claim_volume(claim: str, *, read_only: bool) -> dict[str, Any]:
    """The repository volume."""
    return {"name": MODELS_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def empty_dir(name: str, size_limit: str | None = None) -> dict[str, Any]:
    """Scratch space, since the root filesystem is read-only."""
    return {"name": name, "emptyDir": {"sizeLimit": size_limit} if size_limit else {}}


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
    """nodeSelector, tolerations and affinity of a pod spec (only the ones that are set).

    Jobs use spec.export's nodeSelector/tolerations when given (an export may want a bigger node pool),
    else the runtime's; with ReadWriteOnce storage they still follow the volume's node (affinity).
    """
    fields: dict[str, Any] = {}
    node_selector = spec.runtime.node_selector
    tolerations = spec.runtime.tolerations
    if not runtime:
        if spec.export.node_selector is not None:
            node_selector = spec.export.node_selector
        if spec.export.tolerations is not None:
            tolerations = spec.export.tolerations
    if node_selector:
        fields["nodeSelector"] = dict(node_selector)
    if tolerations:
        fields["tolerations"] = [dict(t) for t in tolerations]
    pod_affinity = affinity(model, spec, claim, runtime=runtime)
    if pod_affinity is not None:
        fields["affinity"] = pod_affinity
    return fields
