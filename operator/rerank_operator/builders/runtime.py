"""The runtime Deployment, its Service and optional HorizontalPodAutoscaler."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from rerank_operator.builders.pod import (
    MODELS_MOUNT,
    claim_volume,
    container_security_context,
    empty_dir,
    owned_metadata,
    placement_fields,
    pod_security_context,
    resources,
)
from rerank_operator.naming import CLAIM_LABEL, child_name, claim_name, common_labels, runtime_selector
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec

API_KEY_MOUNT = "/etc/rerank/api-key"
LIVENESS_PATH = "/v2/health/live"


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
    ]
    if spec.runtime.api_key_secret_ref is not None:
        args += ["--api-key-file", f"{API_KEY_MOUNT}/{spec.runtime.api_key_secret_ref.key}"]
    return args


def build_deployment(
    model: ModelIdentity, spec: RerankModelSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """Runtime pods: model volume read-only, probes on the model's readiness, non-root, read-only root FS.

    With autoscaling the replica count is left to the HPA (the field is not applied, so not owned).
    """
    claim = claim_name(model, spec)
    labels = common_labels(model, "runtime")
    pod_labels = {**labels, CLAIM_LABEL: claim}
    env: list[dict[str, Any]] = [{"name": "TMPDIR", "value": "/tmp"}]
    if spec.runtime.max_batch_tokens is not None:
        env.append({"name": "RERANK_RUNTIME_MAX_BATCH_TOKENS", "value": str(spec.runtime.max_batch_tokens)})
    env += [dict(item) for item in spec.runtime.env]
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
        "resources": resources(
            spec.runtime.resources,
            settings.runtime_cpu_request,
            settings.runtime_memory_request,
            settings.runtime_memory_limit,
        ),
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
                "terminationGracePeriodSeconds": 30,
                "securityContext": pod_security_context(settings),
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
