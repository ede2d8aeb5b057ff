"""Deterministic, length-safe names and labels of the objects a RerankModel owns."""

from __future__ import annotations

import hashlib

from rerank_operator.spec import ModelIdentity, RerankModelSpec

DNS_LABEL_MAX = 63
LABEL_PREFIX = "serving.rerank.dev"
MODEL_LABEL = f"{LABEL_PREFIX}/model"
CLAIM_LABEL = f"{LABEL_PREFIX}/claim"
FINGERPRINT_LABEL = f"{LABEL_PREFIX}/fingerprint"
GENERATION_LABEL = f"{LABEL_PREFIX}/generation"
TARGET_VERSION_LABEL = f"{LABEL_PREFIX}/version"
PROMOTES_LABEL = f"{LABEL_PREFIX}/promotes"
ATTEMPT_LABEL = f"{LABEL_PREFIX}/attempt"
RETRY_TOKEN_LABEL = f"{LABEL_PREFIX}/retry-token"
RETRY_ANNOTATION = f"{LABEL_PREFIX}/retry-export"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = "rerank-operator"


def bounded(name: str, limit: int = DNS_LABEL_MAX) -> str:
    """`name` if it fits in `limit`, else a prefix plus a short hash so different long names stay distinct."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-.')}-{digest}"


def child_name(model: ModelIdentity, suffix: str = "") -> str:
    """Name of a child object: `<model>` or `<model>-<suffix>`, at most 63 characters, suffix kept intact."""
    if not suffix:
        return bounded(model.name)
    return f"{bounded(model.name, DNS_LABEL_MAX - len(suffix) - 1)}-{suffix}"


def claim_name(model: ModelIdentity, spec: RerankModelSpec) -> str:
    """The PersistentVolumeClaim holding the repository: the existing one, else `<model>-models`."""
    return spec.storage.existing_claim or child_name(model, "models")


def export_job_name(model: ModelIdentity, fingerprint: str, attempt: int = 1) -> str:
    """Export Job name: fixed by the spec fingerprint, generation and retry attempt, so a restarted operator
    finds it."""
    retry = f"-a{attempt}" if attempt > 1 else ""
    return child_name(model, f"export-{fingerprint[:8]}-g{model.generation}{retry}")


def retry_token(annotation: str | None) -> str | None:
    """Short label-safe digest of the retry annotation's value (any string a user may write)."""
    if not annotation:
        return None
    return hashlib.sha256(annotation.encode()).hexdigest()[:12]


def promote_job_name(model: ModelIdentity, version: int) -> str:
    """Promote Job name: fixed by the target version and generation."""
    return child_name(model, f"promote-v{version}-g{model.generation}")


def common_labels(model: ModelIdentity, component: str) -> dict[str, str]:
    """Labels on every child object."""
    return {
        "app.kubernetes.io/name": "rerank-model",
        "app.kubernetes.io/instance": bounded(model.name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        COMPONENT_LABEL: component,
        MODEL_LABEL: bounded(model.name),
    }


def runtime_selector(model: ModelIdentity) -> dict[str, str]:
    """Selector of the runtime pods (Deployment, Service, scale subresource)."""
    return {MODEL_LABEL: bounded(model.name), COMPONENT_LABEL: "runtime"}


def format_selector(labels: dict[str, str]) -> str:
    """`k=v,k=v` form of a label selector."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
