"""The one module that talks to the Kubernetes API (and to runtime pods over HTTP).

Everything else in the operator is data in, data out; this module turns that data into API calls:
server-side apply with one field manager, reads, deletes, the status subresource, Events, and the GET of
`/v2/models/{name}` on each ready runtime pod.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError

from rerank_operator.settings import GROUP, KIND, PLURAL, VERSION
from rerank_operator.spec import ModelIdentity

log = logging.getLogger(__name__)

EVENT_MESSAGE_MAX = 1000


class ApplyRejectedError(Exception):
    """The API server refused an applied manifest (invalid or immutable field); nothing was changed."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        super().__init__(f"{kind} {name}: {message}")
        self.kind, self.name, self.message = kind, name, message


@dataclass(frozen=True)
class PodReport:
    """What one ready runtime pod says it serves."""

    pod: str
    served_version: int | None
    error: str | None


def _api_message(error: DynamicApiError) -> str:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return str(error.reason)
    return str(body.get("message", error.reason)) if isinstance(body, dict) else str(error.reason)


class KubeClient:
    """Thin, typed access to the API server for the reconciler."""

    def __init__(self, api_client: kubernetes.client.ApiClient, field_manager: str) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        self.dynamic = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls, field_manager: str) -> KubeClient:
        """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(kubernetes.client.ApiClient(), field_manager)

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply `manifest` as the operator's field manager, taking over conflicting fields."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            result = self.dynamic.server_side_apply(  # type: ignore[no-untyped-call]
                resource,
                body=manifest,
                name=manifest["metadata"]["name"],
                namespace=manifest["metadata"].get("namespace"),
                field_manager=self.field_manager,
                force_conflicts=True,
            )
        except DynamicApiError as error:
            if error.status not in (400, 422):
                raise
            raise ApplyRejectedError(
                manifest["kind"], manifest["metadata"]["name"], _api_message(error)
            ) from None
        applied: dict[str, Any] = result.to_dict()
        return applied

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            found: dict[str, Any] = self.dynamic.get(  # type: ignore[no-untyped-call]
                self._resource(api_version, kind), name=name, namespace=namespace
            ).to_dict()
        except NotFoundError:
            return None
        return found

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (a Job's pods go too); False when it was already gone."""
        try:
            self.dynamic.delete(  # type: ignore[no-untyped-call]
                self._resource(api_version, kind),
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
            )
        except NotFoundError:
            return False
        return True

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace matching a label selector (from the API server, not a cache)."""
        listed = self.dynamic.get(  # type: ignore[no-untyped-call]
            self._resource(api_version, kind), namespace=namespace, label_selector=selector
        )
        return [item.to_dict() for item in listed.items]

    def patch_status(self, model: ModelIdentity, status: dict[str, Any]) -> None:
        """Merge-patch the RerankModel's status subresource (None values remove fields)."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, model.namespace, PLURAL, model.name, {"status": status}
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def post_event(self, model: ModelIdentity, event_type: str, reason: str, message: str) -> None:
        """Record an Event on the RerankModel (best effort: an Event must never fail a reconcile)."""
        now = dt.datetime.now(dt.UTC)
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{model.name}.", "namespace": model.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": model.name,
                "namespace": model.namespace,
                "uid": model.uid,
            },
            "type": event_type,
            "reason": reason,
            "message": message[:EVENT_MESSAGE_MAX],
            "source": {"component": self.field_manager},
            "reportingComponent": self.field_manager,
            "reportingInstance": self.field_manager,
            "firstTimestamp": now.isoformat().replace("+00:00", "Z"),
            "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(model.namespace, body)
        except ApiException as error:
            log.warning(
                "could not post event %s on %s/%s: %s", reason, model.namespace, model.name, error.reason
            )

    def termination_message(self, namespace: str, job_name: str) -> str | None:
        """Termination message of the most recently finished pod of a Job (its result or its error line)."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        finished: list[tuple[str, str]] = []
        for pod in pods:
            for container in (pod.status.container_statuses if pod.status else None) or []:
                terminated = container.state.terminated if container.state else None
                if terminated is not None and terminated.message:
                    stamp = terminated.finished_at.isoformat() if terminated.finished_at else ""
                    finished.append((stamp, terminated.message))
        if not finished:
            return None
        return max(finished)[1]

    @staticmethod
    def pod_report(pod: str, url: str, timeout: float) -> PodReport:
        """GET a pod's `/v2/models/{name}` and read `served_version` from it."""
        try:
            response = httpx.get(url, timeout=timeout)
            response.raise_for_status()
            served = response.json().get("served_version")
        except (httpx.HTTPError, ValueError, AttributeError) as error:
            return PodReport(pod=pod, served_version=None, error=f"{type(error).__name__}: {error}")
        return PodReport(pod=pod, served_version=served if isinstance(served, int) else None, error=None)
