"""Status a GitOps tool can trust: phase, conditions, servingVersion from the pods."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rerank_operator.status import StatusInputs, accepted_status, compute_status, status_events

BASE = StatusInputs(
    generation=4,
    served_name="m",
    fingerprint="fp2",
    versions=[{"version": 1, "fingerprints": ["fp1"]}, {"version": 2, "fingerprints": ["fp2"]}],
    promoted_version=2,
    desired_version=2,
    last_failure=None,
    export_job=None,
    promote_job=None,
    current_failure=False,
    deployed=True,
    desired_replicas=2,
    replicas=2,
    ready_replicas=2,
    rolled_out=True,
    served_by_pods=[2, 2],
)


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_converged_is_ready() -> None:
    status = compute_status(BASE, {}, "t1")
    assert status["phase"] == "Ready"
    assert (status["servingVersion"], status["desiredVersion"], status["latestVersion"]) == (2, 2, 2)
    assert status["observedGeneration"] == 4
    assert _conditions(status) == {
        "Ready": ("True", "Serving"),
        "Exported": ("True", "VersionExported"),
        "Available": ("True", "Serving"),
        "Progressing": ("False", "Converged"),
    }


def test_disagreeing_pods_are_progressing() -> None:
    status = compute_status(replace(BASE, served_by_pods=[1, 2]), {}, "t")
    assert status["servingVersion"] == 1
    assert _conditions(status)["Progressing"] == ("True", "PodsDisagree")
    assert status["phase"] == "Pending"


def test_serving_version_comes_from_pods_not_from_the_spec() -> None:
    status = compute_status(replace(BASE, served_by_pods=[1, 1]), {}, "t")
    assert status["servingVersion"] == 1 and status["desiredVersion"] == 2
    assert _conditions(status)["Ready"][0] == "False"


def test_export_running_is_exporting() -> None:
    inputs = replace(
        BASE, fingerprint="fp3", desired_version=None, export_job="m-export-fp3-g4", served_by_pods=[2]
    )
    status = compute_status(inputs, {}, "t")
    assert status["phase"] == "Exporting"
    assert _conditions(status)["Exported"] == ("False", "Exporting")
    assert _conditions(status)["Available"] == ("True", "Serving")


def test_failed_export_degrades_while_the_previous_version_serves() -> None:
    failure = {"reason": "ExportFailed", "message": "error: not found", "jobName": "j", "fingerprint": "fp3"}
    inputs = replace(
        BASE, fingerprint="fp3", desired_version=None, last_failure=failure, current_failure=True
    )
    status = compute_status(inputs, {}, "t")
    assert status["phase"] == "Degraded" and status["servingVersion"] == 2
    assert status["lastFailure"]["message"] == "error: not found"
    assert _conditions(status)["Exported"] == ("False", "ExportFailed")
    nothing_serving = replace(inputs, served_by_pods=[], ready_replicas=0, deployed=False)
    assert compute_status(nothing_serving, {}, "t")["phase"] == "Failed"


def test_transition_time_moves_only_when_status_changes() -> None:
    first = compute_status(BASE, {}, "t1")
    again = compute_status(BASE, first, "t2")
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"t1"}
    changed = compute_status(replace(BASE, served_by_pods=[], ready_replicas=0), again, "t3")
    times = {c["type"]: c["lastTransitionTime"] for c in changed["conditions"]}
    assert times["Available"] == "t3" and times["Exported"] == "t1"


def test_events_for_phase_and_serving_changes() -> None:
    before = compute_status(replace(BASE, served_by_pods=[1, 1]), {}, "t")
    after = compute_status(BASE, before, "t")
    reasons = [reason for _, reason, _ in status_events(before, after)]
    assert reasons == ["PhaseReady", "ServingVersionChanged"]
    assert status_events(after, after) == []


def test_accepted_status_is_in_progress_for_kstatus() -> None:
    """The first status write (before any Job exists) says Reconciling: Flux must not read it as current."""
    status = accepted_status(3, "2026-01-01T00:00:00Z")
    assert (status["phase"], status["observedGeneration"]) == ("Pending", 3)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {t: c["status"] for t, c in conditions.items()} == {
        "Ready": "False",
        "Reconciling": "True",
        "Stalled": "False",
    }
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] for c in conditions.values())
