"""Export retries and pins during exports: decisions from observed Jobs and history (pure, no cluster)."""

from __future__ import annotations

import dataclasses

from rerank_operator.observed import JobState, job_state
from rerank_operator.reconciler import History, decide, harvest
from rerank_operator.retries import MAX_AUTOMATIC_ATTEMPTS, retry_delay
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity
from rerank_operator.versions import export_fingerprint
from tests.rerank_operator.conftest import make_spec

SPEC = make_spec(export={"weightFormat": "fp32"})
FINGERPRINT = export_fingerprint(SPEC)
FINISHED = "2026-01-01T00:00:10Z"


def _failed(reason: str, attempt: int = 1, token: str | None = None) -> JobState:
    suffix = f"-a{attempt}" if attempt > 1 else ""
    return JobState(
        name=f"minilm-export-{FINGERPRINT[:8]}-g3{suffix}",
        component="export",
        phase="failed",
        generation=3,
        promotes=True,
        fingerprint=FINGERPRINT,
        finished_at=FINISHED,
        message="error: the Hugging Face Hub answered HTTP 503 for repo 'test-org/minilm-reranker'",
        failure_reason=reason,
        attempt=attempt,
        retry_token=token,
    )


def _names(jobs: list[dict[str, object]]) -> list[str]:
    return [j["metadata"]["name"] for j in jobs]  # type: ignore[index]


def test_job_state_reads_reason_attempt_and_token() -> None:
    job = {
        "metadata": {
            "name": "m-export-aaaa-g2-a3",
            "labels": {
                "app.kubernetes.io/component": "export",
                "serving.rerank.dev/attempt": "3",
                "serving.rerank.dev/retry-token": "abc",
            },
        },
        "status": {
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "lastTransitionTime": "t",
                },
            ]
        },
    }
    state = job_state(job)
    assert (state.failure_reason, state.attempt, state.retry_token) == ("BackoffLimitExceeded", 3, "abc")


def test_transient_failure_is_retried_after_a_growing_delay(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    failed = _failed("BackoffLimitExceeded")
    history, events = harvest(History(), SPEC, [failed], "2026-01-01T00:00:11Z", 30.0)
    failure = history.last_failure
    assert failure is not None
    assert (failure["transient"], failure["attempt"], failure["retryAt"]) == (True, 1, "2026-01-01T00:00:40Z")
    assert "transient: retried at 2026-01-01T00:00:40Z" in events[-1][2]

    early = decide(model, SPEC, settings, history, [failed], deployed=True, now="2026-01-01T00:00:39Z")
    assert early.create_jobs == [] and early.current_failure
    due = decide(model, SPEC, settings, history, [failed], deployed=True, now="2026-01-01T00:00:40Z")
    assert _names(due.create_jobs) == [f"minilm-export-{FINGERPRINT[:8]}-g3-a2"]
    assert due.create_jobs[0]["metadata"]["labels"]["serving.rerank.dev/attempt"] == "2"
    assert [r for _, r, _ in due.events] == ["ExportRetried"]
    assert not due.current_failure  # an export is running again

    # The retried Job fails too: the next delay doubles.
    second = _failed("BackoffLimitExceeded", attempt=2)
    history, _ = harvest(history, SPEC, [failed, second], "2026-01-01T00:01:00Z", 30.0)
    assert history.last_failure is not None
    assert history.last_failure["retryAt"] == "2026-01-01T00:01:10Z"  # finished + 60 s
    assert [retry_delay(a, 30.0) for a in range(1, 7)] == [30, 60, 120, 240, 480, 900]


def test_automatic_retries_stop(model: ModelIdentity, settings: OperatorSettings) -> None:
    last = _failed("BackoffLimitExceeded", attempt=MAX_AUTOMATIC_ATTEMPTS)
    history, _ = harvest(History(), SPEC, [last], "2026-01-01T00:00:11Z", 30.0)
    assert history.last_failure is not None and "retryAt" not in history.last_failure
    later = decide(model, SPEC, settings, history, [last], deployed=True, now="2027-01-01T00:00:00Z")
    assert later.create_jobs == [] and later.current_failure


def test_permanent_failure_is_not_retried(model: ModelIdentity, settings: OperatorSettings) -> None:
    for reason in ("PodFailurePolicy", "DeadlineExceeded"):
        failed = _failed(reason)
        history, _ = harvest(History(), SPEC, [failed], "2026-01-01T00:00:11Z", 30.0)
        assert history.last_failure is not None and history.last_failure["transient"] is False
        later = decide(model, SPEC, settings, history, [failed], deployed=True, now="2027-01-01T00:00:00Z")
        assert later.create_jobs == [] and later.current_failure


def test_retry_annotation_retries_any_failure_once(model: ModelIdentity, settings: OperatorSettings) -> None:
    failed = _failed("PodFailurePolicy")
    history, _ = harvest(History(), SPEC, [failed], "2026-01-01T00:00:11Z", 30.0)
    asked = dataclasses.replace(model, retry_token="t1")
    retry = decide(asked, SPEC, settings, history, [failed], deployed=True, now="2026-01-01T00:00:12Z")
    (job,) = retry.create_jobs
    assert job["metadata"]["labels"]["serving.rerank.dev/retry-token"] == "t1"
    # That attempt fails as well: the same annotation value does not loop.
    again = _failed("PodFailurePolicy", attempt=2, token="t1")
    history, _ = harvest(history, SPEC, [failed, again], "2026-01-01T00:01:00Z", 30.0)
    assert (
        decide(asked, SPEC, settings, history, [again], deployed=True, now="2027-01-01T00:00:00Z").create_jobs
        == []
    )
    # A new value retries once more.
    newer = dataclasses.replace(model, retry_token="t2")
    retry = decide(newer, SPEC, settings, history, [again], deployed=True, now="2027-01-01T00:00:00Z")
    assert _names(retry.create_jobs) == [f"minilm-export-{FINGERPRINT[:8]}-g3-a3"]


def test_pin_set_during_a_promoting_export_restarts_it_without_promotion(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    spec = make_spec(versionPolicy={"pin": 1, "keep": 1})
    running = JobState(
        name=f"minilm-export-{export_fingerprint(spec)[:8]}-g2",
        component="export",
        phase="active",
        generation=2,
        promotes=True,
        fingerprint=export_fingerprint(spec),
    )
    history = History(versions=[{"version": 1, "fingerprints": ["old"]}], promoted_version=1)
    decision = decide(model, spec, settings, history, [running], deployed=True)
    assert decision.delete_jobs == [running.name]
    assert "ExportRestarted" in [r for _, r, _ in decision.events]
    (job,) = decision.create_jobs
    assert job["metadata"]["labels"]["serving.rerank.dev/promotes"] == "false"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--promote" not in args
    assert args[args.index("--protect") + 1] == "1"  # retention never deletes the pinned version
    assert decision.desired_version == 1


def test_pinned_version_is_never_dropped_from_the_history() -> None:
    spec = make_spec(versionPolicy={"pin": 1, "keep": 1})
    versions = [{"version": n, "fingerprints": [f"f{n}"]} for n in (1, 2, 3)]
    history, _ = harvest(History(versions=versions, promoted_version=3), spec, [], "now")
    assert [r["version"] for r in history.versions] == [1, 3]
