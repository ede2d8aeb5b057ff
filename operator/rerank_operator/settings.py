"""Operator settings, read once at startup from `RERANK_OPERATOR_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GROUP = "serving.rerank.dev"
VERSION = "v1alpha1"
PLURAL = "rerankmodels"
KIND = "RerankModel"


class OperatorSettings(BaseSettings):
    """Everything the operator can be configured with; passed down explicitly, never read at import time."""

    model_config = SettingsConfigDict(env_prefix="RERANK_OPERATOR_", frozen=True, extra="ignore")

    runtime_image: str = Field(
        default="rerank-runtime:0.1.0", description="Runtime image used when spec.runtime.image is unset."
    )
    # The runtime image carries no torch/optimum (the `runtime` extra); export Jobs need the `export` extra.
    export_image: str = Field(
        default="rerank-export:0.1.0",
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
    run_as_user: int = Field(
        default=65532, ge=1, description="Non-root UID of every container the operator creates."
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
    liveness_endpoint: str = Field(
        default="http://0.0.0.0:8080/healthz", description="Where kopf serves the operator's liveness probe."
    )
