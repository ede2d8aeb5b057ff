"""When a failed export Job is tried again (pure functions).

rerank-repo exits 75 for failures of the moment (hub 429/5xx, timeouts, interruption) and 1 or 2 for failures
only a change fixes (401/403/404, an unsupported model, bad arguments). The export Job's podFailurePolicy
turns the permanent exits into an immediate `PodFailurePolicy` failure and ignores disruptions (eviction, node
loss), so a Job that failed with `BackoffLimitExceeded` ran out of pod retries on transient causes: the
operator starts a new Job after a growing delay, up to MAX_AUTOMATIC_ATTEMPTS. A new value of the
`serving.rerank.dev/retry-export` annotation retries any failed export once more.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rerank_operator.observed import JobState

MAX_AUTOMATIC_ATTEMPTS = 6
MAX_DELAY_SECONDS = 900.0


def retryable(job: JobState) -> bool:
    """True for a failed export Job whose pods failed only for transient causes."""
    return (
        job.component == "export" and job.phase == "failed" and job.failure_reason == "BackoffLimitExceeded"
    )


def retry_delay(attempt: int, base_seconds: float) -> float:
    """Delay before the attempt after `attempt`: base, 2 x base, 4 x base, ... capped at 15 minutes."""
    return float(min(MAX_DELAY_SECONDS, base_seconds * 2 ** max(0, attempt - 1)))


def _parse(timestamp: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def retry_at(job: JobState, base_seconds: float) -> str | None:
    """RFC 3339 time of the automatic retry of a failed export Job, or None when there is none."""
    if not retryable(job) or job.attempt >= MAX_AUTOMATIC_ATTEMPTS or not job.finished_at:
        return None
    finished = _parse(job.finished_at)
    if finished is None:
        return None
    when = finished + dt.timedelta(seconds=retry_delay(job.attempt, base_seconds))
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def next_attempt(failure: dict[str, Any], retry_token: str | None, now: str) -> tuple[int, str] | None:
    """(attempt number, why) of the export to start after `failure`, or None to leave it failed.

    A retry annotation whose value differs from the one the failed Job ran under always retries; otherwise
    only a transient failure does, once its retryAt has passed.
    """
    attempt = int(failure.get("attempt", 1)) + 1
    if retry_token is not None and retry_token != failure.get("retryToken"):
        return attempt, "the serving.rerank.dev/retry-export annotation changed"
    due, current = failure.get("retryAt"), _parse(now)
    if due and current is not None and (when := _parse(due)) is not None and current >= when:
        return attempt, f"transient failure of {failure.get('jobName')}"
    return None
