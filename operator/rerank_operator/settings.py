"""Operator settings, read once at startup from `RERANK_OPERATOR_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GROUP = "serving.rerank.dev"
VERSION = "v1alpha1"
PLURAL = "rerankmodels"
KIND = "RerankModel"


class OperatorSettings(BaseSettings):
    """Everything the operator can be configured with; passed down explicitly, never read at import time."""

    model_config = SettingsConfigDict(env_prefix="RERANK_OPERATOR_", frozen=True, extra="ignore")

    runtime_image: str = Field(
        default="ghcr.io/rerank-operator/rerank-runtime:0.1.0",
        description="Runtime image used when spec.runtime.image is unset.",
    )
    # The runtime image carries no torch/optimum (the `runtime` extra); export Jobs need the `export` extra.
    export_image: str = Field(
        default="ghcr.io/rerank-operator/rerank-export:0.1.0",
        description="Image of export and promote Jobs when spec.export.image is unset (Dockerfile.runtime "
        "built with EXTRAS=runtime,export).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    field_manager: str = Field(
        default="rerank-operator", description="Field manager of every server-side apply."
    )
    reconcile_interval: float = Field(
        default=10.0, gt=0, description="Seconds between periodic reconciles (status refresh, drift repair)."
    )
    pvc_delete_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="Fate of a created claim on delete when spec.storage.deletePolicy is unset.",
    )
    runtime_port: int = Field(
        default=8000, ge=1, le=65535, description="Port the runtime container listens on."
    )
    pod_request_timeout: float = Field(
        default=2.0, gt=0, description="Timeout of the operator's GET http://<podIP>:<port>/v2/models/<name>."
    )
    job_ttl_seconds: int = Field(
        default=3600, ge=0, description="ttlSecondsAfterFinished of export/promote Jobs."
    )
    export_retry_base_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Delay before retrying an export that failed for a transient cause; doubles per attempt.",
    )
    run_as_user: int | None = Field(
        default=65532,
        ge=1,
        description="Non-root UID (and GID, fsGroup) of every pod the operator creates. Empty leaves them to "
        "the platform (OpenShift's restricted-v2 assigns them per namespace); pods still run as non-root.",
    )
    image_pull_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Secret names: imagePullSecrets of runtime pods and Jobs whose spec "
        "sets none.",
    )
    runtime_service_account: str | None = Field(
        default=None,
        description="ServiceAccount of runtime pods when spec.runtime.serviceAccountName is unset.",
    )
    export_service_account: str | None = Field(
        default=None,
        description="ServiceAccount of export/promote Jobs when spec.export.serviceAccountName is unset.",
    )
    export_cache_size: str = Field(
        default="20Gi",
        description="sizeLimit of an export Job's /cache emptyDir (and its ephemeral-storage request) when "
        "spec.export.cacheSize is unset.",
    )
    runtime_shutdown_delay: int = Field(
        default=10,
        ge=0,
        le=300,
        description="Seconds a terminating runtime pod keeps serving while not ready, so Service endpoints "
        "drop it before it stops (rerank-serve --shutdown-delay) when spec.runtime.shutdownDelaySeconds "
        "is unset.",
    )
    network_policy: bool = Field(
        default=False,
        description="Create an ingress NetworkPolicy per RerankModel unless spec.networkPolicy.enabled "
        "says otherwise.",
    )
    operator_namespace: str | None = Field(
        default=None, description="Namespace of the operator's pods (allowed to reach the runtime pods)."
    )
    operator_pod_labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Labels of the operator's pods as k=v,k=v (allowed to reach the runtime pods).",
    )
    cluster_domain: str = Field(
        default="cluster.local", description="Cluster DNS domain used in status.endpoint."
    )
    runtime_cpu_request: str = "1"
    runtime_memory_request: str = "2Gi"
    runtime_memory_limit: str = "4Gi"
    export_cpu_request: str = "1"
    export_memory_request: str = "4Gi"
    export_memory_limit: str = "8Gi"

    @field_validator("run_as_user", "runtime_service_account", "export_service_account", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("image_pull_secrets", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("operator_pod_labels", mode="before")
    @classmethod
    def _label_list(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            return {key.strip(): val.strip() for key, val in pairs}
        return value

    liveness_endpoint: str = Field(
        default="http://0.0.0.0:8080/healthz", description="Where kopf serves the operator's liveness probe."
    )
