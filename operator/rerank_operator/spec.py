"""Typed view of a RerankModel: its identity and its spec (defaults mirror the CRD's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rerank_operator.settings import GROUP, KIND, VERSION


class _SpecModel(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class SecretKeyRef(_SpecModel):
    """A key in a Secret of the RerankModel's namespace."""

    name: str
    key: str


class LocalObjectReference(_SpecModel):
    """A named object in the RerankModel's namespace (an image pull Secret)."""

    name: str


class ConfigMapKeyRef(_SpecModel):
    """A key in a ConfigMap of the RerankModel's namespace."""

    name: str
    key: str = "ca.crt"


class HuggingFaceSource(_SpecModel):
    """A Hugging Face Hub repository."""

    repo: str
    revision: str | None = None
    token_secret_ref: SecretKeyRef | None = Field(default=None, alias="tokenSecretRef")


class Source(_SpecModel):
    """Exactly one of a hub repository or a folder on the model volume (enforced by the CRD)."""

    hugging_face: HuggingFaceSource | None = Field(default=None, alias="huggingFace")
    local_path: str | None = Field(default=None, alias="localPath")


class ExportSpec(_SpecModel):
    """How the model is exported."""

    weight_format: Literal["fp32", "fp16", "int8", "int4"] = Field(default="int8", alias="weightFormat")
    max_length: int | None = Field(default=None, alias="maxLength")
    image: str | None = None
    resources: dict[str, Any] | None = None
    timeout_seconds: int = Field(default=3600, alias="timeoutSeconds")
    backoff_limit: int = Field(default=2, alias="backoffLimit")
    env: list[dict[str, Any]] = Field(default_factory=list)
    ca_bundle: ConfigMapKeyRef | None = Field(default=None, alias="caBundle")
    cache_size: str | None = Field(default=None, alias="cacheSize")
    node_selector: dict[str, str] | None = Field(default=None, alias="nodeSelector")
    tolerations: list[dict[str, Any]] | None = None
    service_account_name: str | None = Field(default=None, alias="serviceAccountName")
    image_pull_secrets: list[LocalObjectReference] | None = Field(default=None, alias="imagePullSecrets")


class VersionPolicy(_SpecModel):
    """Pin and retention."""

    pin: int | None = None
    keep: int = 3


class StorageSpec(_SpecModel):
    """The volume holding the model repository."""

    size: str = "10Gi"
    storage_class_name: str | None = Field(default=None, alias="storageClassName")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        default="ReadWriteOnce", alias="accessMode"
    )
    existing_claim: str | None = Field(default=None, alias="existingClaim")
    delete_policy: Literal["Retain", "Delete"] | None = Field(default=None, alias="deletePolicy")


class RuntimeSpec(_SpecModel):
    """The runtime Deployment."""

    replicas: int = 1
    image: str | None = None
    resources: dict[str, Any] | None = None
    precision: Literal["auto", "f32", "bf16"] = "auto"
    max_batch_tokens: int | None = Field(default=None, alias="maxBatchTokens")
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, alias="apiKeySecretRef")
    env: list[dict[str, Any]] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    placement: Literal["Colocated", "Spread"] | None = None
    service_account_name: str | None = Field(default=None, alias="serviceAccountName")
    image_pull_secrets: list[LocalObjectReference] | None = Field(default=None, alias="imagePullSecrets")
    shutdown_delay_seconds: int | None = Field(default=None, alias="shutdownDelaySeconds")


class AutoscalingSpec(_SpecModel):
    """CPU-based HorizontalPodAutoscaler."""

    min_replicas: int = Field(default=1, alias="minReplicas")
    max_replicas: int = Field(alias="maxReplicas")
    target_cpu_utilization: int = Field(default=80, alias="targetCPUUtilization")


class ServiceSpec(_SpecModel):
    """The Service in front of the runtime pods."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = 8000


class NetworkPolicySpec(_SpecModel):
    """Ingress NetworkPolicy of the runtime pods."""

    enabled: bool | None = None
    from_: list[dict[str, Any]] = Field(default_factory=list, alias="from")


class RerankModelSpec(_SpecModel):
    """spec of a RerankModel."""

    source: Source
    served_name: str | None = Field(default=None, alias="servedName")
    export: ExportSpec = Field(default_factory=lambda: ExportSpec())
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy, alias="versionPolicy")
    storage: StorageSpec = Field(default_factory=lambda: StorageSpec())
    runtime: RuntimeSpec = Field(default_factory=lambda: RuntimeSpec())
    autoscaling: AutoscalingSpec | None = None
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec, alias="networkPolicy")

    @property
    def model_name(self) -> str:
        """Name clients use and the folder in the repository: servedName, else the hub repository id."""
        if self.served_name:
            return self.served_name
        if self.source.hugging_face is not None:
            return self.source.hugging_face.repo
        raise ValueError("servedName is required with source.localPath")

    @property
    def colocated(self) -> bool:
        """True when all pods using the volume must share its node (ReadWriteOnce, or asked for)."""
        if self.runtime.placement is not None:
            return self.runtime.placement == "Colocated"
        return self.storage.access_mode == "ReadWriteOnce"


@dataclass(frozen=True)
class ModelIdentity:
    """Who a RerankModel is: enough to name, own and label its children."""

    name: str
    namespace: str
    uid: str
    generation: int
    # Digest of the serving.rerank.dev/retry-export annotation: a new value retries a failed export.
    retry_token: str | None = None

    def owner_reference(self) -> dict[str, Any]:
        """ownerReference making the RerankModel the controller of a child (garbage-collected with it)."""
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
