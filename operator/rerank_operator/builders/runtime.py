"""The runtime Deployment, its Service and optional HorizontalPodAutoscaler."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

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
from rerank_operator.naming import CLAIM_LABEL, child_name, claim_name, common_labels, runtime_selector
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec

API_KEY_MOUNT = "/etc/rerank/api-key"
LIVENESS_PATH = "/v2/health/live"
# rerank-serve waits up to this long for in-flight requests after its shutdown delay (its drain timeout).
DRAIN_SECONDS = 30
MIB = 1024 * 1024
# During a hot swap a pod holds the old and the new version (plus compile-time buffers of the new one).
SWAP_MEMORY_FACTOR_REQUEST = 2
SWAP_MEMORY_FACTOR_LIMIT = 3
RUNTIME_BASE_MEMORY_MIB = 768
_CPU_SUFFIX = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m?)$")
_MEMORY_UNITS = {
    **{unit: 1024 ** (power + 1) for power, unit in enumerate(("Ki", "Mi", "Gi", "Ti"))},
    **{unit: 1000 ** (power + 1) for power, unit in enumerate(("k", "M", "G", "T"))},
}


def cpu_cores(quantity: str | int | float | None) -> float | None:
    """A CPU quantity ("500m", "2", 1.5) in cores, or None when it is not one."""
    if quantity is None:
        return None
    match = _CPU_SUFFIX.match(str(quantity).strip())
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def memory_bytes(quantity: str | int | None) -> int | None:
    """A memory quantity ("2Gi", "512Mi", 1000) in bytes, or None when it is not one."""
    if quantity is None:
        return None
    text = str(quantity).strip()
    for unit, factor in _MEMORY_UNITS.items():
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * factor)
    return int(text) if text.isdigit() else None


# Sizes differ a little between exports; coarse steps keep the pod template (and the pods) unchanged
# unless the model really grew.
MEMORY_STEP = 512 * MIB


def _rounded(size: int) -> str:
    return f"{-(-size // MEMORY_STEP) * MEMORY_STEP // MIB}Mi"


def runtime_resources(
    spec: RerankModelSpec, settings: OperatorSettings, model_bytes: int | None
) -> dict[str, Any]:
    """The spec's resources, else the operator's defaults raised to fit two loaded versions of the model.

    A hot swap compiles the new version beside the old one, so the memory default grows with the exported
    size (from the version's files): request >= base + 2 x size, limit >= base + 3 x size, in 512Mi steps.
    """
    given = resources(
        spec.runtime.resources,
        settings.runtime_cpu_request,
        settings.runtime_memory_request,
        settings.runtime_memory_limit,
    )
    if spec.runtime.resources or not model_bytes:
        return given
    base = RUNTIME_BASE_MEMORY_MIB * MIB
    for section, factor in (("requests", SWAP_MEMORY_FACTOR_REQUEST), ("limits", SWAP_MEMORY_FACTOR_LIMIT)):
        configured = memory_bytes(given[section]["memory"]) or 0
        needed = base + factor * model_bytes
        if needed > configured:
            given[section]["memory"] = _rounded(needed)
    return given


def stream_count(container_resources: dict[str, Any]) -> int:
    """OpenVINO CPU streams for the pod: its whole requested cores (at least 1).

    OpenVINO's THROUGHPUT hint sizes streams from the cores it sees, which in a container is the node's
    cores, not the pod's share: a 1-CPU pod on a 64-core node would run 16+ streams and thrash.
    """
    requested = cpu_cores((container_resources.get("requests") or {}).get("cpu"))
    if requested is None:
        requested = cpu_cores((container_resources.get("limits") or {}).get("cpu"))
    return max(1, int(requested or 1))


def shutdown_delay(spec: RerankModelSpec, settings: OperatorSettings) -> int:
    """Seconds a terminating pod stays up not-ready (endpoints drop it) before it drains."""
    if spec.runtime.shutdown_delay_seconds is not None:
        return spec.runtime.shutdown_delay_seconds
    return settings.runtime_shutdown_delay


def readiness_path(served_name: str) -> str:
    """`/v2/models/{name}/ready` with the name URL-encoded ('/' becomes %2F)."""
    return f"/v2/models/{quote(served_name, safe='')}/ready"


def model_path(served_name: str) -> str:
    """`/v2/models/{name}`: where a pod reports the version it serves."""
    return f"/v2/models/{quote(served_name, safe='')}"


def runtime_command(spec: RerankModelSpec, settings: OperatorSettings) -> list[str]:
    """`rerank-serve ...` for the spec."""
    args = [
        "rerank-serve",
        "--repository",
        MODELS_MOUNT,
        "--model",
        spec.model_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(settings.runtime_port),
        "--precision",
        spec.runtime.precision,
        "--shutdown-delay",
        str(shutdown_delay(spec, settings)),
    ]
    if spec.runtime.api_key_secret_ref is not None:
        args += ["--api-key-file", f"{API_KEY_MOUNT}/{spec.runtime.api_key_secret_ref.key}"]
    return args


def build_deployment(
    model: ModelIdentity,
    spec: RerankModelSpec,
    settings: OperatorSettings,
    model_bytes: int | None = None,
) -> dict[str, Any]:
    """Runtime pods: model volume read-only, probes on the model's readiness, non-root, read-only root FS.

    With autoscaling the replica count is left to the HPA (the field is not applied, so not owned).
    `model_bytes` (size of the largest retained version) raises the default memory to fit a hot swap.
    """
    claim = claim_name(model, spec)
    labels = common_labels(model, "runtime")
    pod_labels = {**labels, CLAIM_LABEL: claim}
    container_resources = runtime_resources(spec, settings, model_bytes)
    env: list[dict[str, Any]] = [
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "RERANK_RUNTIME_NUM_STREAMS", "value": str(stream_count(container_resources))},
    ]
    if spec.runtime.max_batch_tokens is not None:
        env.append({"name": "RERANK_RUNTIME_MAX_BATCH_TOKENS", "value": str(spec.runtime.max_batch_tokens)})
    env = merged_env(env, spec.runtime.env)
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [claim_volume(claim, read_only=True), empty_dir("tmp")]
    if spec.runtime.api_key_secret_ref is not None:
        mounts.append({"name": "api-key", "mountPath": API_KEY_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "api-key",
                "secret": {
                    "secretName": spec.runtime.api_key_secret_ref.name,
                    "items": [
                        {
                            "key": spec.runtime.api_key_secret_ref.key,
                            "path": spec.runtime.api_key_secret_ref.key,
                        }
                    ],
                },
            }
        )
    command = runtime_command(spec, settings)
    container = {
        "name": "runtime",
        "image": spec.runtime.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command[:1],
        "args": command[1:],
        "ports": [{"name": "http", "containerPort": settings.runtime_port, "protocol": "TCP"}],
        "env": env,
        "resources": container_resources,
        "securityContext": container_security_context(),
        # Ready only once the model is loaded and warmed; a pod still loading gets no traffic.
        "readinessProbe": {
            "httpGet": {"path": readiness_path(spec.model_name), "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVENESS_PATH, "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "volumeMounts": mounts,
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": runtime_selector(model)},
        # A new pod must be ready before an old one goes: no capacity drop during template changes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "automountServiceAccountToken": False,
                # Not ready for the shutdown delay, then up to DRAIN_SECONDS for in-flight requests.
                "terminationGracePeriodSeconds": shutdown_delay(spec, settings) + DRAIN_SECONDS,
                "securityContext": pod_security_context(settings),
                **pod_identity(
                    settings,
                    service_account=spec.runtime.service_account_name,
                    pull_secrets=spec.runtime.image_pull_secrets,
                    default_service_account=settings.runtime_service_account,
                ),
                "containers": [container],
                "volumes": volumes,
                **placement_fields(model, spec, claim, runtime=True),
            },
        },
    }
    if spec.autoscaling is None:
        deployment_spec["replicas"] = spec.runtime.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(model, child_name(model), labels),
        "spec": deployment_spec,
    }


def build_service(model: ModelIdentity, spec: RerankModelSpec) -> dict[str, Any]:
    """Service named like the RerankModel, forwarding spec.service.port to the runtime's http port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(model, child_name(model), common_labels(model, "runtime")),
        "spec": {
            "type": spec.service.type,
            "selector": runtime_selector(model),
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_hpa(model: ModelIdentity, spec: RerankModelSpec) -> dict[str, Any] | None:
    """CPU-utilisation HPA for the runtime Deployment, or None without spec.autoscaling."""
    if spec.autoscaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": owned_metadata(model, child_name(model), common_labels(model, "runtime")),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(model)},
            "minReplicas": spec.autoscaling.min_replicas,
            "maxReplicas": spec.autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": spec.autoscaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }
