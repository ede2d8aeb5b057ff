"""One reconcile path for create, update, resume and the periodic timer.

`harvest` and `decide` are pure: observed Jobs, remembered history and spec in; history, actions, Events out.
`reconcile` is the glue that observes through KubeClient, applies the decision and writes the status.
"""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from rerank_operator import builders
from rerank_operator.builders.runtime import model_path
from rerank_operator.kube import ApplyRejectedError, KubeClient, PodReport
from rerank_operator.naming import (
    COMPONENT_LABEL,
    MODEL_LABEL,
    bounded,
    child_name,
    format_selector,
    runtime_selector,
)
from rerank_operator.observed import JobState, deployment_state, job_state, ready_pods
from rerank_operator.retries import next_attempt, retry_at, retryable
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec
from rerank_operator.status import StatusInputs, accepted_status, compute_status, status_events
from rerank_operator.versions import (
    desired_version,
    export_fingerprint,
    failure_line,
    largest_size,
    parse_export_result,
    record_version,
    retained,
    version_for,
)

Event = tuple[str, str, str]  # (type, reason, message)


def utc_now() -> str:
    """Current time as an RFC 3339 UTC timestamp with seconds precision (Kubernetes' format)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class History:
    """What only the status remembers: fingerprint->version records, promoted version, last failure."""

    versions: list[dict[str, Any]] = field(default_factory=list)
    promoted_version: int | None = None
    last_failure: dict[str, Any] | None = None

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> History:
        """History remembered in a RerankModel's status."""
        return cls(
            versions=[dict(r) for r in status.get("versions") or []],
            promoted_version=status.get("promotedVersion"),
            last_failure=dict(status["lastFailure"]) if status.get("lastFailure") else None,
        )


@dataclass(frozen=True)
class Decision:
    """What to do this round."""

    desired_version: int | None
    create_jobs: list[dict[str, Any]]
    delete_jobs: list[str]
    deploy: bool
    export_job: str | None
    promote_job: str | None
    current_failure: bool
    events: list[Event]


def needs_message(job: JobState, history: History) -> bool:
    """True when a finished Job's termination message has not been read into the history yet."""
    if job.phase == "succeeded" and job.component == "export":
        return job.fingerprint is None or version_for(history.versions, job.fingerprint) is None
    if job.phase == "failed":
        return (history.last_failure or {}).get("jobName") != job.name
    return False


def harvest(
    history: History,
    spec: RerankModelSpec,
    jobs: list[JobState],
    now: str,
    retry_base_seconds: float = 30.0,
) -> tuple[History, list[Event]]:
    """Fold finished Jobs into the history: new versions, the promoted version, the latest failure (with
    whether and when an export failure is retried)."""
    events: list[Event] = []
    versions = history.versions
    failures: list[tuple[str, JobState, str]] = []
    finished = sorted((j for j in jobs if j.finished_at), key=lambda j: (j.finished_at or "", j.name))
    for job in finished:
        if job.component != "export" or job.phase != "succeeded" or job.fingerprint is None:
            continue
        if version_for(versions, job.fingerprint) is not None:
            continue
        result = parse_export_result(job.message)
        if result is None:
            failures.append(("ExportFailed", job, "the export Job succeeded but reported no version"))
            continue
        versions = record_version(
            versions, spec=spec, fingerprint=job.fingerprint, result=result, job_name=job.name, now=now
        )
        how = "found existing" if result.reused else "exported"
        events.append(("Normal", "VersionExported", f"Job {job.name} {how} version {result.version}"))

    promoted = history.promoted_version
    promoting = [j for j in finished if j.promotes and j.phase == "succeeded"]
    if promoting:
        last = promoting[-1]
        number = last.target_version if last.component == "promote" else None
        if last.component == "export" and last.fingerprint is not None:
            number = version_for(versions, last.fingerprint)
        if number is not None and number != promoted:
            if last.component == "promote":
                events.append(("Normal", "Promoted", f"Job {last.name} made version {number} current"))
            promoted = number

    failures += [
        ("ExportFailed" if j.component == "export" else "PromoteFailed", j, failure_line(j.message))
        for j in finished
        if j.phase == "failed"
    ]
    last_failure = history.last_failure
    if failures:
        reason, job, message = max(failures, key=lambda f: (f[1].finished_at or "", f[1].name))
        if (last_failure or {}).get("jobName") != job.name:
            last_failure = {
                "reason": reason,
                "message": message,
                "jobName": job.name,
                "generation": job.generation,
                "time": job.finished_at or now,
            }
            if job.fingerprint:
                last_failure["fingerprint"] = job.fingerprint
            if job.target_version is not None:
                last_failure["version"] = job.target_version
            if job.component == "export":
                last_failure["attempt"] = job.attempt
                last_failure["transient"] = retryable(job)
                if job.retry_token is not None:
                    last_failure["retryToken"] = job.retry_token
                if (when := retry_at(job, retry_base_seconds)) is not None:
                    last_failure["retryAt"] = when
                    message += f" (transient: retried at {when})"
            events.append(("Warning", reason, f"Job {job.name}: {message}"))

    protected = {v for v in (promoted, spec.version_policy.pin) if v is not None}
    versions = retained(versions, spec.version_policy.keep, protected)
    return History(versions=versions, promoted_version=promoted, last_failure=last_failure), events


def decide(
    model: ModelIdentity,
    spec: RerankModelSpec,
    settings: OperatorSettings,
    history: History,
    jobs: list[JobState],
    *,
    deployed: bool,
    now: str = "",
) -> Decision:
    """Which Jobs to create or delete and whether to deploy, so that the spec's version ends up served.

    Idempotent: Job names are fixed by fingerprint/version and generation, and a Job is only created when no
    running or finished Job already covers it, so a restarted operator never duplicates an export.
    """
    fingerprint = export_fingerprint(spec)
    events: list[Event] = []
    create: list[dict[str, Any]] = []
    delete: list[str] = []
    known = version_for(history.versions, fingerprint)
    exports = [j for j in jobs if j.component == "export"]
    active_exports = [j for j in exports if j.phase == "active"]
    for job in active_exports:
        if job.fingerprint != fingerprint:
            # Superseded by a newer spec: its result would race the new one for the current pointer.
            delete.append(job.name)
            events.append(
                ("Normal", "ExportSuperseded", f"deleted Job {job.name}: the export settings changed")
            )
        elif spec.version_policy.pin is not None and job.promotes:
            # Started before the pin: it would make its version current over the pinned one.
            delete.append(job.name)
            events.append(
                (
                    "Normal",
                    "ExportRestarted",
                    f"deleted Job {job.name}: versionPolicy.pin is set, the export must not become current",
                )
            )
    running_export = next(
        (j.name for j in active_exports if j.fingerprint == fingerprint and j.name not in delete), None
    )

    failure = history.last_failure or {}
    failure_here = failure.get("fingerprint") == fingerprint and failure.get("generation") == model.generation
    failed_export_here = failure_here or any(
        j.phase == "failed" and j.fingerprint == fingerprint and j.generation == model.generation
        for j in exports
    )
    attempt, retry_reason = 1, ""
    if failed_export_here and failure_here and known is None and running_export is None:
        retry = next_attempt(failure, model.retry_token, now)
        if retry is not None:
            (attempt, retry_reason), failed_export_here = retry, False

    if known is None and running_export is None and not failed_export_here:
        export_job = builders.build_export_job(
            model, spec, settings, fingerprint, promote=spec.version_policy.pin is None, attempt=attempt
        )
        create.append(export_job)
        running_export = export_job["metadata"]["name"]
        if retry_reason:
            events.append(
                (
                    "Normal",
                    "ExportRetried",
                    f"created Job {running_export} (attempt {attempt}): {retry_reason}",
                )
            )
        else:
            events.append(
                ("Normal", "ExportStarted", f"created Job {running_export} for the current export settings")
            )

    desired = desired_version(spec, history.versions, fingerprint)
    promotes = [j for j in jobs if j.component == "promote"]
    running_promote = next((j.name for j in promotes if j.phase == "active"), None)
    failed_promote_here = any(
        j.phase == "failed" and j.target_version == desired and j.generation == model.generation
        for j in promotes
    ) or (
        failure.get("reason") == "PromoteFailed"
        and failure.get("version") == desired
        and failure.get("generation") == model.generation
    )
    if (
        desired is not None
        and desired != history.promoted_version
        and running_export is None
        and running_promote is None
        and not failed_promote_here
    ):
        promote_job = builders.build_promote_job(model, spec, settings, desired)
        create.append(promote_job)
        running_promote = promote_job["metadata"]["name"]
        events.append(
            ("Normal", "PromoteStarted", f"created Job {running_promote} to serve version {desired}")
        )

    export_failed = known is None and running_export is None and failed_export_here
    promote_failed = (
        desired is not None
        and desired != history.promoted_version
        and running_promote is None
        and failed_promote_here
    )
    return Decision(
        desired_version=desired,
        create_jobs=create,
        delete_jobs=delete,
        deploy=deployed or bool(history.versions) or spec.version_policy.pin is not None,
        export_job=running_export,
        promote_job=running_promote,
        current_failure=export_failed or promote_failed,
        events=events,
    )


def _apply_child(
    kube: KubeClient, manifest: dict[str, Any], events: list[Event], *, repairable: bool = True
) -> dict[str, Any] | None:
    """Apply one child, turning creation and changes (spec edits or repaired drift) into Events.

    A manifest the API server rejects (e.g. a claim asked to shrink) becomes a Warning Event and leaves the
    object as it is, so the rest of the reconcile still happens.
    """
    meta = manifest["metadata"]
    before = kube.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
    try:
        after = kube.apply(manifest)
    except ApplyRejectedError as rejected:
        events.append(("Warning", "ApplyRejected", str(rejected)))
        return before
    if before is None:
        events.append(("Normal", "Created", f"created {manifest['kind']} {meta['name']}"))
    elif repairable and before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]:
        events.append(
            ("Normal", "Updated", f"applied {manifest['kind']} {meta['name']} (spec change or drift)")
        )
    return after


def _remove_child(
    kube: KubeClient, model: ModelIdentity, api_version: str, kind: str, why: str, events: list[Event]
) -> None:
    """Delete an owned child the spec no longer asks for (read first: no DELETE while there is none)."""
    name = child_name(model)
    found = kube.get(api_version, kind, model.namespace, name)
    if found is None:
        return
    owners = found["metadata"].get("ownerReferences") or []
    if any(ref.get("uid") == model.uid for ref in owners) and kube.delete(
        api_version, kind, model.namespace, name
    ):
        events.append(("Normal", "Deleted", f"deleted the {kind}: {why}"))


def _pod_reports(
    kube: KubeClient, model: ModelIdentity, spec: RerankModelSpec, settings: OperatorSettings
) -> list[PodReport]:
    pods = kube.list("v1", "Pod", model.namespace, format_selector(runtime_selector(model)))
    targets = ready_pods(pods)
    if not targets:
        return []
    path = model_path(spec.model_name)
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        return list(
            pool.map(
                lambda t: KubeClient.pod_report(
                    t[0], f"http://{t[1]}:{settings.runtime_port}{path}", settings.pod_request_timeout
                ),
                targets,
            )
        )


def reconcile(
    model: ModelIdentity,
    spec: RerankModelSpec,
    previous_status: dict[str, Any],
    settings: OperatorSettings,
    kube: KubeClient,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> dict[str, Any]:
    """Observe, decide, act, report. Returns the status written."""
    now = utc_now()
    events: list[Event] = []
    if not previous_status.get("phase"):
        # Accepted: say so before the first (possibly slow) API round.
        previous_status = accepted_status(model.generation, now)
        kube.patch_status(model, previous_status)
        events.append(("Normal", "PhasePending", "accepted; preparing storage and the first export"))

    selector = f"{MODEL_LABEL}={bounded(model.name)},{COMPONENT_LABEL} in (export,promote)"
    raw_jobs = [
        j
        for j in kube.list("batch/v1", "Job", model.namespace, selector)
        if any(ref.get("uid") == model.uid for ref in j["metadata"].get("ownerReferences") or [])
    ]
    history = History.from_status(previous_status)
    jobs = []
    for raw in raw_jobs:
        state = job_state(raw)
        if needs_message(state, history):
            state = replace(state, message=kube.termination_message(model.namespace, state.name))
        jobs.append(state)
    history, harvested = harvest(history, spec, jobs, now, settings.export_retry_base_seconds)
    events += harvested

    pvc = builders.build_pvc(model, spec, settings)
    if pvc is not None:
        _apply_child(kube, pvc, events, repairable=False)

    deployment = kube.get("apps/v1", "Deployment", model.namespace, child_name(model))
    decision = decide(model, spec, settings, history, jobs, deployed=deployment is not None, now=now)
    events += decision.events
    for name in decision.delete_jobs:
        kube.delete("batch/v1", "Job", model.namespace, name)
    for job in decision.create_jobs:
        kube.apply(job)
        logger.info("created Job %s", job["metadata"]["name"])

    reports: list[PodReport] = []
    if decision.deploy:
        manifest = builders.build_deployment(model, spec, settings, largest_size(history.versions))
        deployment = _apply_child(kube, manifest, events)
        _apply_child(kube, builders.build_service(model, spec), events)
        for kind, api_version, built, why in (
            ("PodDisruptionBudget", "policy/v1", builders.build_pdb(model, spec), "at most one replica"),
            (
                "NetworkPolicy",
                "networking.k8s.io/v1",
                builders.build_network_policy(model, spec, settings),
                "networkPolicy is off",
            ),
        ):
            if built is not None:
                _apply_child(kube, built, events)
            else:
                _remove_child(kube, model, api_version, kind, why, events)
        hpa = builders.build_hpa(model, spec)
        if hpa is not None:
            _apply_child(kube, hpa, events)
        elif kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", model.namespace, child_name(model)):
            events.append(
                ("Normal", "Deleted", "deleted the HorizontalPodAutoscaler: autoscaling was removed")
            )
        reports = _pod_reports(kube, model, spec, settings)

    rollout = deployment_state(deployment) if deployment is not None else None
    inputs = StatusInputs(
        generation=model.generation,
        served_name=spec.model_name,
        fingerprint=export_fingerprint(spec),
        versions=history.versions,
        promoted_version=history.promoted_version,
        desired_version=decision.desired_version,
        last_failure=history.last_failure,
        export_job=decision.export_job,
        promote_job=decision.promote_job,
        current_failure=decision.current_failure,
        deployed=deployment is not None,
        desired_replicas=rollout.desired_replicas if rollout else 0,
        replicas=rollout.replicas if rollout else 0,
        ready_replicas=rollout.ready_replicas if rollout else 0,
        rolled_out=rollout.rolled_out if rollout else False,
        served_by_pods=[r.served_version for r in reports if r.served_version is not None],
        pod_errors=[f"{r.pod}: {r.error}" for r in reports if r.error],
        endpoint=(
            f"http://{child_name(model)}.{model.namespace}.svc.{settings.cluster_domain}:{spec.service.port}"
            if deployment is not None
            else None
        ),
        selector=format_selector(runtime_selector(model)),
    )
    status = compute_status(inputs, previous_status, now)
    kube.patch_status(model, status)
    events += status_events(previous_status, status)
    for event_type, reason, message in events:
        log_at = logging.WARNING if event_type == "Warning" else logging.INFO
        logger.log(log_at, "%s: %s", reason, message)
        kube.post_event(model, event_type, reason, message)
    return status
