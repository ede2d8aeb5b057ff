"""Reconcile decisions from observed Jobs and remembered history (pure, no cluster)."""

from __future__ import annotations

from rerank_operator.observed import JobState, deployment_state, job_state
from rerank_operator.reconciler import History, decide, harvest
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity
from rerank_operator.versions import export_fingerprint
from tests.rerank_operator.conftest import make_spec

INT8 = make_spec()
FP32 = make_spec(export={"weightFormat": "fp32"})
RESULT_1 = '{"name": "n", "version": 1, "reused": false, "export_hash": "h1"}'


def _export(fingerprint: str, phase: str, generation: int = 3, **extra: object) -> JobState:
    return JobState(
        name=f"minilm-export-{fingerprint[:8]}-g{generation}",
        component="export",
        phase=phase,  # type: ignore[arg-type]
        generation=generation,
        promotes=True,
        fingerprint=fingerprint,
        finished_at="2026-01-01T00:00:10Z" if phase != "active" else None,
        **extra,  # type: ignore[arg-type]
    )


def _names(jobs: list[dict[str, object]]) -> list[str]:
    return [j["metadata"]["name"] for j in jobs]  # type: ignore[index]


def test_first_reconcile_creates_one_export_job(model: ModelIdentity, settings: OperatorSettings) -> None:
    decision = decide(model, INT8, settings, History(), [], deployed=False)
    fingerprint = export_fingerprint(INT8)
    assert _names(decision.create_jobs) == [f"minilm-export-{fingerprint[:8]}-g3"]
    assert decision.export_job == decision.create_jobs[0]["metadata"]["name"]
    assert not decision.deploy  # nothing to serve before the first version exists


def test_restarted_operator_does_not_duplicate_a_running_export(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    running = _export(export_fingerprint(INT8), "active", generation=2)
    decision = decide(model, INT8, settings, History(), [running], deployed=False)
    assert decision.create_jobs == []
    assert decision.export_job == running.name


def test_finished_export_is_recorded_and_deployed(model: ModelIdentity, settings: OperatorSettings) -> None:
    done = _export(export_fingerprint(INT8), "succeeded", message=RESULT_1)
    history, events = harvest(History(), INT8, [done], "now")
    assert [r["version"] for r in history.versions] == [1]
    assert history.promoted_version == 1
    assert any(reason == "VersionExported" for _, reason, _ in events)
    decision = decide(model, INT8, settings, history, [done], deployed=False)
    assert decision.create_jobs == [] and decision.deploy and decision.desired_version == 1


def test_reverted_spec_promotes_without_exporting(model: ModelIdentity, settings: OperatorSettings) -> None:
    history = History(
        versions=[
            {"version": 1, "fingerprints": [export_fingerprint(INT8)]},
            {"version": 2, "fingerprints": [export_fingerprint(FP32)]},
        ],
        promoted_version=2,
    )
    decision = decide(model, INT8, settings, history, [], deployed=True)
    assert _names(decision.create_jobs) == ["minilm-promote-v1-g3"]
    assert decision.desired_version == 1


def test_pin_promotes_an_existing_version(model: ModelIdentity, settings: OperatorSettings) -> None:
    pinned = make_spec(versionPolicy={"pin": 2})
    history = History(
        versions=[
            {"version": 1, "fingerprints": [export_fingerprint(pinned)]},
            {"version": 2, "fingerprints": ["x"]},
        ],
        promoted_version=1,
    )
    decision = decide(model, pinned, settings, history, [], deployed=True)
    assert _names(decision.create_jobs) == ["minilm-promote-v2-g3"]
    promoted = JobState(
        name="minilm-promote-v2-g3", component="promote", phase="succeeded", generation=3, promotes=True,
        target_version=2, finished_at="2026-01-01T00:01:00Z",
    )  # fmt: skip
    after, _ = harvest(history, pinned, [promoted], "now")
    assert after.promoted_version == 2
    assert decide(model, pinned, settings, after, [promoted], deployed=True).create_jobs == []


def test_failed_export_is_not_retried_until_the_spec_changes(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    fingerprint = export_fingerprint(FP32)
    failed = _export(fingerprint, "failed", message="error: repository 'test-org/missing' not found")
    before = History(versions=[{"version": 1, "fingerprints": ["old"]}], promoted_version=1)
    history, events = harvest(before, FP32, [failed], "now")
    assert history.last_failure is not None
    assert history.last_failure["message"] == "error: repository 'test-org/missing' not found"
    assert ("Warning", "ExportFailed") in [(t, r) for t, r, _ in events]
    decision = decide(model, FP32, settings, history, [failed], deployed=True)
    assert decision.create_jobs == [] and decision.current_failure
    next_generation = ModelIdentity(model.name, model.namespace, model.uid, generation=4)
    retry = decide(next_generation, FP32, settings, history, [failed], deployed=True)
    assert _names(retry.create_jobs) == [f"minilm-export-{fingerprint[:8]}-g4"]


def test_superseded_export_is_deleted(model: ModelIdentity, settings: OperatorSettings) -> None:
    old = _export(export_fingerprint(INT8), "active", generation=2)
    decision = decide(model, FP32, settings, History(), [old], deployed=False)
    assert decision.delete_jobs == [old.name]
    assert len(decision.create_jobs) == 1


def test_job_and_deployment_state_from_api_objects() -> None:
    job = {
        "metadata": {
            "name": "m-export-aaaa-g2",
            "labels": {
                "app.kubernetes.io/component": "export",
                "serving.rerank.dev/fingerprint": "aaaa",
                "serving.rerank.dev/generation": "2",
                "serving.rerank.dev/promotes": "true",
            },
        },
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        },
    }
    state = job_state(job)
    assert (state.phase, state.generation, state.fingerprint, state.promotes) == ("failed", 2, "aaaa", True)
    deployment = {
        "metadata": {"generation": 4},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1},
    }
    rollout = deployment_state(deployment)
    assert rollout.rolled_out and rollout.ready_replicas == 1
