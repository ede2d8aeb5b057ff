"""Export and promote Jobs: run `rerank-repo` against the model volume."""

from __future__ import annotations

from typing import Any

from rerank_operator.builders.pod import (
    MODELS_MOUNT,
    claim_volume,
    container_security_context,
    empty_dir,
    merged_env,
    owned_metadata,
    placement_fields,
    pod_identity,
    pod_security_context,
    resources,
)
from rerank_operator.naming import (
    ATTEMPT_LABEL,
    CLAIM_LABEL,
    FINGERPRINT_LABEL,
    GENERATION_LABEL,
    PROMOTES_LABEL,
    RETRY_TOKEN_LABEL,
    TARGET_VERSION_LABEL,
    claim_name,
    common_labels,
    export_job_name,
    promote_job_name,
)
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec

TERMINATION_LOG = "/dev/termination-log"
CACHE_MOUNT = "/cache"
CA_MOUNT = "/etc/rerank/ca"
PROMOTE_DEADLINE_SECONDS = 600
CONTAINER_NAME = "rerank-repo"
# rerank-repo's exit codes for failures that a retry cannot fix (bad arguments, 401/403/404, unsupported
# model): the Job fails at once instead of spending its backoffLimit. Transient failures exit 75.
PERMANENT_EXIT_CODES = [1, 2]


def pod_failure_policy() -> dict[str, Any]:
    """Evictions, preemption and node loss (DisruptionTarget) do not count against backoffLimit; permanent
    exporter failures fail the Job without retries."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER_NAME,
                    "operator": "In",
                    "values": PERMANENT_EXIT_CODES,
                },
            },
        ]
    }


def export_command(spec: RerankModelSpec, *, promote: bool) -> list[str]:
    """`rerank-repo export ...` for the spec; `--promote` makes the result the served version."""
    if spec.source.hugging_face is not None:
        source = spec.source.hugging_face.repo
    else:
        source = f"{MODELS_MOUNT}/{spec.source.local_path}"
    args = [
        "rerank-repo",
        "export",
        "--source",
        source,
        "--repository",
        MODELS_MOUNT,
        "--name",
        spec.model_name,
    ]
    if spec.source.hugging_face is not None and spec.source.hugging_face.revision:
        args += ["--revision", spec.source.hugging_face.revision]
    args += ["--weight-format", spec.export.weight_format]
    if spec.export.max_length is not None:
        args += ["--max-length", str(spec.export.max_length)]
    if promote:
        args.append("--promote")
    args += ["--keep", str(spec.version_policy.keep)]
    if spec.version_policy.pin is not None:
        # Retention must not delete the pinned version before its promote Job has made it current.
        args += ["--protect", str(spec.version_policy.pin)]
    return args


def _job(
    *,
    model: ModelIdentity,
    spec: RerankModelSpec,
    settings: OperatorSettings,
    name: str,
    labels: dict[str, str],
    command: list[str],
    env: list[dict[str, Any]],
    backoff_limit: int,
    deadline_seconds: int,
) -> dict[str, Any]:
    claim = claim_name(model, spec)
    pod_labels = {**labels, CLAIM_LABEL: claim}
    cache_size = spec.export.cache_size or settings.export_cache_size
    container_resources = resources(
        spec.export.resources,
        settings.export_cpu_request,
        settings.export_memory_request,
        settings.export_memory_limit,
    )
    # The download cache is node-local disk: ask the scheduler for it and let the kubelet bound it.
    container_resources.setdefault("requests", {}).setdefault("ephemeral-storage", cache_size)
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODELS_MOUNT},
        {"name": "cache", "mountPath": CACHE_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        claim_volume(claim, read_only=False),
        empty_dir("cache", cache_size),
        empty_dir("tmp"),
    ]
    bundle = spec.export.ca_bundle
    if bundle is not None:
        mounts.append({"name": "ca-bundle", "mountPath": CA_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "ca-bundle",
                "configMap": {"name": bundle.name, "items": [{"key": bundle.key, "path": "ca.crt"}]},
            }
        )
        ca_file = f"{CA_MOUNT}/ca.crt"
        env = [
            *env,
            {"name": "SSL_CERT_FILE", "value": ca_file},
            {"name": "REQUESTS_CA_BUNDLE", "value": ca_file},
            {"name": "CURL_CA_BUNDLE", "value": ca_file},
        ]
    container = {
        "name": CONTAINER_NAME,
        "image": spec.export.image or settings.export_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command[:1],
        "args": command[1:],
        "env": merged_env(env, spec.export.env),
        "resources": container_resources,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        # The exporter writes its JSON result or its `error: ...` line there; logs are the fallback.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owned_metadata(model, name, labels),
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": deadline_seconds,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "podFailurePolicy": pod_failure_policy(),
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(settings),
                    **pod_identity(
                        settings,
                        service_account=spec.export.service_account_name,
                        pull_secrets=spec.export.image_pull_secrets,
                        default_service_account=settings.export_service_account,
                    ),
                    "containers": [container],
                    "volumes": volumes,
                    **placement_fields(model, spec, claim, runtime=False),
                },
            },
        },
    }


def build_export_job(
    model: ModelIdentity,
    spec: RerankModelSpec,
    settings: OperatorSettings,
    fingerprint: str,
    *,
    promote: bool,
    attempt: int = 1,
) -> dict[str, Any]:
    """Export Job for the spec's current export settings (named by fingerprint, generation and attempt).

    The Hugging Face token reaches the container only through a secretKeyRef, never as a literal value.
    """
    labels = {
        **common_labels(model, "export"),
        FINGERPRINT_LABEL: fingerprint,
        GENERATION_LABEL: str(model.generation),
        PROMOTES_LABEL: "true" if promote else "false",
        ATTEMPT_LABEL: str(attempt),
    }
    if model.retry_token is not None:
        labels[RETRY_TOKEN_LABEL] = model.retry_token
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "TMPDIR", "value": "/tmp"},
    ]
    hub = spec.source.hugging_face
    if hub is not None and hub.token_secret_ref is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": hub.token_secret_ref.name, "key": hub.token_secret_ref.key}
                },
            }
        )
    return _job(
        model=model,
        spec=spec,
        settings=settings,
        name=export_job_name(model, fingerprint, attempt),
        labels=labels,
        command=export_command(spec, promote=promote),
        env=env,
        backoff_limit=spec.export.backoff_limit,
        deadline_seconds=spec.export.timeout_seconds,
    )


def build_promote_job(
    model: ModelIdentity, spec: RerankModelSpec, settings: OperatorSettings, version: int
) -> dict[str, Any]:
    """Job that points the repository's `current` at an existing version (pin, rollback, revert)."""
    labels = {
        **common_labels(model, "promote"),
        TARGET_VERSION_LABEL: str(version),
        GENERATION_LABEL: str(model.generation),
        PROMOTES_LABEL: "true",
    }
    command = [
        "rerank-repo",
        "promote",
        "--repository",
        MODELS_MOUNT,
        "--name",
        spec.model_name,
        "--version",
        str(version),
    ]
    return _job(
        model=model,
        spec=spec,
        settings=settings,
        name=promote_job_name(model, version),
        labels=labels,
        command=command,
        env=[{"name": "TMPDIR", "value": "/tmp"}],
        backoff_limit=2,
        deadline_seconds=PROMOTE_DEADLINE_SECONDS,
    )
