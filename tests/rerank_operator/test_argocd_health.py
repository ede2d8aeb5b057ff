"""The Argo CD health check in docs/ runs in a real Lua interpreter and maps status as documented."""

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

SCRIPT = (Path(__file__).parents[2] / "docs" / "argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Evaluate the health script the way Argo CD does: `obj` global in, table `hs` out."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    return dict(lua.execute(SCRIPT))


def rerank_model(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "minilm", "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def ready_condition(message: str) -> list[dict[str, str]]:
    return [{"type": "Ready", "status": "True", "reason": "Serving", "message": message}]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, "Progressing"),
        ({"phase": "Ready", "observedGeneration": 1, "servingVersion": 2}, "Progressing"),
        ({"phase": "Pending", "observedGeneration": 2}, "Progressing"),
        ({"phase": "Exporting", "observedGeneration": 2}, "Progressing"),
        ({"phase": "Ready", "observedGeneration": 2, "servingVersion": 2}, "Healthy"),
        ({"phase": "Degraded", "observedGeneration": 2, "servingVersion": 1}, "Degraded"),
        ({"phase": "Failed", "observedGeneration": 2}, "Degraded"),
    ],
)
def test_phase_maps_to_argo_health(status: dict[str, Any] | None, expected: str) -> None:
    assert health(rerank_model(2, status))["status"] == expected


def test_messages_name_the_served_version_and_the_failure() -> None:
    healthy = health(
        rerank_model(
            3,
            {
                "phase": "Ready",
                "observedGeneration": 3,
                "servingVersion": 4,
                "conditions": ready_condition("all replicas serve version 4"),
            },
        )
    )
    assert healthy["message"] == "Serving version 4"

    degraded = health(
        rerank_model(
            3,
            {
                "phase": "Degraded",
                "observedGeneration": 3,
                "servingVersion": 1,
                "conditions": ready_condition("export failed: error: repo not found"),
            },
        )
    )
    assert "Still serving version 1" in degraded["message"]
    assert "repo not found" in degraded["message"]


def kstatus_conditions(ready: str, reconciling: str, stalled: str, message: str) -> list[dict[str, str]]:
    return [
        {"type": "Ready", "status": ready, "reason": "R", "message": message},
        {"type": "Reconciling", "status": reconciling, "reason": "Exporting", "message": message},
        {"type": "Stalled", "status": stalled, "reason": "ExportFailed", "message": message},
    ]


@pytest.mark.parametrize(
    ("phase", "ready", "reconciling", "stalled", "expected"),
    [
        # kstatus: Stalled=True is Failed, Reconciling=True InProgress, then Ready decides (Current).
        ("Exporting", "False", "True", "False", "Progressing"),
        ("Pending", "False", "True", "False", "Progressing"),
        ("Ready", "True", "False", "False", "Healthy"),
        ("Degraded", "False", "False", "True", "Degraded"),
        ("Failed", "False", "False", "True", "Degraded"),
        # The conditions win over the phase: Argo CD and Flux never disagree.
        ("Ready", "False", "True", "False", "Progressing"),
        ("Ready", "False", "False", "True", "Degraded"),
    ],
)
def test_kstatus_conditions_decide_like_flux(
    phase: str, ready: str, reconciling: str, stalled: str, expected: str
) -> None:
    status = {
        "phase": phase,
        "observedGeneration": 2,
        "servingVersion": 1,
        "conditions": kstatus_conditions(ready, reconciling, stalled, "error: repo not found"),
    }
    result = health(rerank_model(2, status))
    assert result["status"] == expected
    if expected == "Degraded":
        assert result["message"] == "Still serving version 1; error: repo not found"


def test_a_new_object_with_the_defaulted_status_is_progressing() -> None:
    """The CRD defaults status to observedGeneration 0 until the operator writes it."""
    assert health(rerank_model(1, {"observedGeneration": 0}))["status"] == "Progressing"
