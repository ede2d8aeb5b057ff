"""Observed state of a RerankModel's children, as plain data read from API objects (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rerank_operator.naming import (
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    FINGERPRINT_LABEL,
    GENERATION_LABEL,
    PROMOTES_LABEL,
    RETRY_TOKEN_LABEL,
    TARGET_VERSION_LABEL,
)

JobPhase = Literal["active", "succeeded", "failed"]


@dataclass(frozen=True)
class JobState:
    """An export or promote Job of the model."""

    name: str
    component: str
    phase: JobPhase
    generation: int
    promotes: bool
    fingerprint: str | None = None
    target_version: int | None = None
    finished_at: str | None = None
    message: str | None = None
    failure_reason: str | None = None  # reason of the Failed condition (BackoffLimitExceeded, ...)
    attempt: int = 1
    retry_token: str | None = None


@dataclass(frozen=True)
class DeploymentState:
    """The runtime Deployment's rollout."""

    replicas: int
    ready_replicas: int
    updated_replicas: int
    desired_replicas: int
    rolled_out: bool


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def job_state(job: dict[str, Any], message: str | None = None) -> JobState:
    """JobState of a Job object; `message` is its pod's termination message when already fetched."""
    labels = job.get("metadata", {}).get("labels") or {}
    status = job.get("status") or {}
    failed = _condition(job, "Failed")
    phase: JobPhase
    finished_at: str | None = None
    if _condition(job, "Complete") is not None:
        phase, finished_at = "succeeded", status.get("completionTime")
    elif failed is not None:
        phase, finished_at = "failed", failed.get("lastTransitionTime")
    else:
        phase = "active"
    target = labels.get(TARGET_VERSION_LABEL)
    attempt = labels.get(ATTEMPT_LABEL, "1")
    return JobState(
        name=job["metadata"]["name"],
        component=labels.get(COMPONENT_LABEL, ""),
        phase=phase,
        generation=int(labels.get(GENERATION_LABEL, "0")),
        promotes=labels.get(PROMOTES_LABEL) == "true",
        fingerprint=labels.get(FINGERPRINT_LABEL),
        target_version=int(target) if target and target.isdigit() else None,
        finished_at=finished_at,
        message=message,
        failure_reason=failed.get("reason") if failed is not None and phase == "failed" else None,
        attempt=int(attempt) if attempt.isdigit() else 1,
        retry_token=labels.get(RETRY_TOKEN_LABEL),
    )


def deployment_state(deployment: dict[str, Any]) -> DeploymentState:
    """DeploymentState of a Deployment object."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    replicas = int(status.get("replicas", 0))
    observed = status.get("observedGeneration", 0) >= deployment.get("metadata", {}).get("generation", 0)
    return DeploymentState(
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas", 0)),
        updated_replicas=updated,
        desired_replicas=desired,
        rolled_out=observed and updated >= desired and replicas <= desired,
    )


def ready_pods(pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(name, podIP) of pods that are Ready and not terminating."""
    ready: list[tuple[str, str]] = []
    for pod in pods:
        metadata = pod.get("metadata", {})
        status = pod.get("status") or {}
        if metadata.get("deletionTimestamp") or not status.get("podIP"):
            continue
        if _condition(pod, "Ready") is not None:
            ready.append((metadata["name"], status["podIP"]))
    return sorted(ready)
