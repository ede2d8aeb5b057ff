"""status of a RerankModel computed from what was observed (pure functions).

servingVersion is what ready pods report at /v2/models/{name}, never what was asked for. While pods disagree,
Progressing is True.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONDITION_TYPES = ("Ready", "Exported", "Available", "Progressing")


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status is derived from."""

    generation: int
    served_name: str
    fingerprint: str
    versions: list[dict[str, Any]]
    promoted_version: int | None
    desired_version: int | None
    last_failure: dict[str, Any] | None
    export_job: str | None  # running export Job for the current export settings
    promote_job: str | None  # running promote Job
    current_failure: bool  # last_failure applies to the current spec and nothing newer is running
    deployed: bool
    desired_replicas: int
    replicas: int
    ready_replicas: int
    rolled_out: bool
    served_by_pods: list[int]  # served_version of each ready pod that answered
    pod_errors: list[str] = field(default_factory=list)
    endpoint: str | None = None
    selector: str | None = None


@dataclass(frozen=True)
class Condition:
    """One status condition before timestamps are attached."""

    type: str
    status: bool
    reason: str
    message: str


def serving_version(served_by_pods: list[int]) -> int | None:
    """The version ready pods serve; the oldest one while they disagree (the conservative answer)."""
    return min(served_by_pods) if served_by_pods else None


def conditions(inputs: StatusInputs) -> list[Condition]:
    """Exported, Available, Progressing and Ready for the inputs."""
    serving = serving_version(inputs.served_by_pods)
    recorded = [r for r in inputs.versions if inputs.fingerprint in r.get("fingerprints", [])]
    failure_message = (inputs.last_failure or {}).get("message", "")

    if recorded:
        version = recorded[0]["version"]
        exported = Condition(
            "Exported", True, "VersionExported", f"the export settings map to version {version}"
        )
    elif inputs.export_job:
        exported = Condition("Exported", False, "Exporting", f"Job {inputs.export_job} is exporting")
    elif inputs.current_failure and (inputs.last_failure or {}).get("reason") == "ExportFailed":
        exported = Condition("Exported", False, "ExportFailed", failure_message)
    else:
        exported = Condition("Exported", False, "ExportPending", "waiting to export the current settings")

    if serving is not None and inputs.ready_replicas > 0:
        available = Condition(
            "Available",
            True,
            "Serving",
            f"{inputs.ready_replicas} ready pod(s) serve version {serving}",
        )
    elif not inputs.deployed:
        available = Condition(
            "Available", False, "NotDeployed", "the runtime is deployed once a version exists"
        )
    else:
        detail = f" ({inputs.pod_errors[0]})" if inputs.pod_errors else ""
        available = Condition("Available", False, "NoReadyPods", f"no ready pod serves the model yet{detail}")

    distinct = sorted(set(inputs.served_by_pods))
    if inputs.export_job:
        progressing = Condition("Progressing", True, "Exporting", f"Job {inputs.export_job} is exporting")
    elif inputs.promote_job:
        progressing = Condition(
            "Progressing", True, "Promoting", f"Job {inputs.promote_job} sets the version"
        )
    elif len(distinct) > 1:
        listed = ", ".join(str(v) for v in distinct)
        progressing = Condition("Progressing", True, "PodsDisagree", f"ready pods serve versions {listed}")
    elif inputs.current_failure:
        progressing = Condition("Progressing", False, inputs.last_failure["reason"], failure_message)  # type: ignore[index]
    elif inputs.desired_version is not None and serving != inputs.desired_version:
        progressing = Condition(
            "Progressing",
            True,
            "RollingOut",
            f"waiting for pods to serve version {inputs.desired_version} (serving {serving})",
        )
    elif inputs.deployed and not inputs.rolled_out:
        progressing = Condition("Progressing", True, "RollingOut", "the runtime Deployment is rolling out")
    elif inputs.desired_version is None:
        progressing = Condition(
            "Progressing", True, "ExportPending", "waiting to export the current settings"
        )
    else:
        progressing = Condition("Progressing", False, "Converged", f"serving version {serving}")

    is_ready = available.status and not progressing.status and not inputs.current_failure
    is_ready = is_ready and serving == inputs.desired_version
    if is_ready:
        ready = Condition("Ready", True, "Serving", f"version {serving} is served by every ready pod")
    elif inputs.current_failure:
        ready = Condition("Ready", False, inputs.last_failure["reason"], failure_message)  # type: ignore[index]
    elif progressing.status:
        ready = Condition("Ready", False, progressing.reason, progressing.message)
    else:
        ready = Condition("Ready", False, available.reason, available.message)
    return [ready, exported, available, progressing]


def phase(inputs: StatusInputs, computed: list[Condition]) -> str:
    """Failed/Degraded on a failure of the current spec, else Exporting, Ready or Pending."""
    by_type = {c.type: c for c in computed}
    if inputs.current_failure:
        return "Degraded" if by_type["Available"].status else "Failed"
    if inputs.export_job:
        return "Exporting"
    if by_type["Ready"].status:
        return "Ready"
    return "Pending"


def with_timestamps(
    computed: list[Condition], previous: list[dict[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """Conditions as API dicts; lastTransitionTime changes only when a condition's status changes."""
    before = {c.get("type"): c for c in previous}
    result = []
    for condition in computed:
        status = "True" if condition.status else "False"
        old = before.get(condition.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        result.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    return result


def accepted_status(generation: int, now: str) -> dict[str, Any]:
    """The first status of a new RerankModel, written before the first (possibly slow) API round.

    It must never read as healthy: kstatus (Flux's health checks) takes an object whose observedGeneration
    matches and that has no Ready, Reconciling or Stalled condition as current, so say Reconciling=True.
    """
    message = "accepted; preparing storage and the first export"
    computed = [
        Condition("Ready", False, "Accepted", message),
        Condition("Reconciling", True, "Accepted", message),
        Condition("Stalled", False, "NoFailure", "nothing stops the reconcile"),
    ]
    return {
        "phase": "Pending",
        "observedGeneration": generation,
        "conditions": with_timestamps(computed, [], generation, now),
    }


def compute_status(inputs: StatusInputs, previous: dict[str, Any], now: str) -> dict[str, Any]:
    """The full status to write (a merge patch: None removes a field)."""
    computed = conditions(inputs)
    numbers = [int(r["version"]) for r in inputs.versions]
    return {
        "phase": phase(inputs, computed),
        "observedGeneration": inputs.generation,
        "conditions": with_timestamps(computed, previous.get("conditions") or [], inputs.generation, now),
        "servedName": inputs.served_name,
        "latestVersion": max(numbers) if numbers else None,
        "desiredVersion": inputs.desired_version,
        "servingVersion": serving_version(inputs.served_by_pods),
        "promotedVersion": inputs.promoted_version,
        "versions": inputs.versions,
        "replicas": inputs.replicas,
        "readyReplicas": inputs.ready_replicas,
        "selector": inputs.selector,
        "endpoint": inputs.endpoint,
        "lastFailure": inputs.last_failure,
    }


def status_events(previous: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, reason, message) Events for visible transitions between two statuses."""
    events: list[tuple[str, str, str]] = []
    ready = next((c for c in current["conditions"] if c["type"] == "Ready"), None)
    if previous.get("phase") != current["phase"]:
        kind = "Warning" if current["phase"] in ("Degraded", "Failed") else "Normal"
        detail = ready["message"] if ready else ""
        events.append((kind, f"Phase{current['phase']}", f"phase {current['phase']}: {detail}"))
    if previous.get("servingVersion") != current["servingVersion"]:
        events.append(
            (
                "Normal",
                "ServingVersionChanged",
                f"ready pods serve version {current['servingVersion']}"
                f" (was {previous.get('servingVersion')})",
            )
        )
    return events
