"""The PersistentVolumeClaim holding the model repository."""

from __future__ import annotations

from typing import Any

from rerank_operator.naming import claim_name, common_labels
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec


def pvc_delete_policy(spec: RerankModelSpec, settings: OperatorSettings) -> str:
    """Retain or Delete: the spec's choice, else the operator's default."""
    return spec.storage.delete_policy or settings.pvc_delete_policy


def build_pvc(
    model: ModelIdentity, spec: RerankModelSpec, settings: OperatorSettings
) -> dict[str, Any] | None:
    """The claim the operator creates, or None with existingClaim.

    Only with deletePolicy Delete does the claim get an ownerReference: garbage collection then removes it
    with the RerankModel; with Retain it outlives it and a new RerankModel of the same name reuses it.
    """
    if spec.storage.existing_claim:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": [spec.storage.access_mode],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class_name:
        claim_spec["storageClassName"] = spec.storage.storage_class_name
    metadata: dict[str, Any] = {
        "name": claim_name(model, spec),
        "namespace": model.namespace,
        "labels": common_labels(model, "storage"),
        "annotations": {"serving.rerank.dev/delete-policy": pvc_delete_policy(spec, settings)},
    }
    if pvc_delete_policy(spec, settings) == "Delete":
        metadata["ownerReferences"] = [model.owner_reference()]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": claim_spec}
