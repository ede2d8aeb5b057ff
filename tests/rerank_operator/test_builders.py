"""Pure builders: the manifests a RerankModel turns into (no cluster)."""

from __future__ import annotations

import json
from typing import Any

from rerank_operator import builders
from rerank_operator.naming import CLAIM_LABEL, child_name, export_job_name
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity
from tests.rerank_operator.conftest import make_spec


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def _assert_hardened(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


def test_deployment_serves_the_model_read_only_with_probes(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    spec = make_spec(
        servedName="BAAI/bge-reranker-base",
        runtime={"replicas": 2, "resources": {"requests": {"cpu": "2", "memory": "3Gi"}}, "precision": "f32"},
    )
    deployment = builders.build_deployment(model, spec, settings)
    pod = _pod(deployment)
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "3Gi"}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/BAAI%2Fbge-reranker-base/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["command"] + container["args"] == [
        "rerank-serve", "--repository", "/models", "--model", "BAAI/bge-reranker-base",
        "--host", "0.0.0.0", "--port", "8000", "--precision", "f32", "--shutdown-delay", "10",
    ]  # fmt: skip
    models_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models_mount["readOnly"] is True
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]
    assert claim == {"claimName": "minilm-models", "readOnly": True}
    _assert_hardened(pod)
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == model.uid
    assert deployment["metadata"]["ownerReferences"][0]["controller"] is True


def test_read_write_once_co_locates_every_pod_with_the_volume(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    spec = make_spec(runtime={"replicas": 3})
    deployment = builders.build_deployment(model, spec, settings)
    job = builders.build_export_job(model, spec, settings, "f" * 16, promote=True)
    for manifest in (deployment, job):
        template = manifest["spec"]["template"]
        assert template["metadata"]["labels"][CLAIM_LABEL] == "minilm-models"
        term = template["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            0
        ]
        assert term["labelSelector"]["matchLabels"] == {CLAIM_LABEL: "minilm-models"}
        assert term["topologyKey"] == "kubernetes.io/hostname"


def test_read_write_many_spreads_replicas(model: ModelIdentity, settings: OperatorSettings) -> None:
    spec = make_spec(storage={"accessMode": "ReadWriteMany"}, runtime={"replicas": 3})
    affinity = _pod(builders.build_deployment(model, spec, settings))["affinity"]
    assert "podAffinity" not in affinity
    preferred = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert "affinity" not in _pod(builders.build_export_job(model, spec, settings, "a" * 16, promote=True))


def test_autoscaling_leaves_replicas_to_the_hpa(model: ModelIdentity, settings: OperatorSettings) -> None:
    spec = make_spec(autoscaling={"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilization": 60})
    assert "replicas" not in builders.build_deployment(model, spec, settings)["spec"]
    hpa = builders.build_hpa(model, spec)
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert hpa["spec"]["scaleTargetRef"]["name"] == child_name(model)
    assert builders.build_hpa(model, make_spec()) is None


def test_export_job_runs_the_exporter_with_the_spec(model: ModelIdentity, settings: OperatorSettings) -> None:
    spec = make_spec(
        source={"huggingFace": {"repo": "test-org/minilm-reranker", "revision": "v2"}},
        export={"weightFormat": "fp16", "maxLength": 256, "timeoutSeconds": 900, "backoffLimit": 1},
        versionPolicy={"keep": 4},
    )
    job = builders.build_export_job(model, spec, settings, "0123456789abcdef", promote=True)
    container = _pod(job)["containers"][0]
    assert container["command"] + container["args"] == [
        "rerank-repo", "export", "--source", "test-org/minilm-reranker", "--repository", "/models",
        "--name", "test-org/minilm-reranker", "--revision", "v2", "--weight-format", "fp16",
        "--max-length", "256", "--promote", "--keep", "4",
    ]  # fmt: skip
    assert job["metadata"]["name"] == "minilm-export-01234567-g3"
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert job["spec"]["ttlSecondsAfterFinished"] == settings.job_ttl_seconds
    assert _pod(job)["restartPolicy"] == "Never"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    models_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models_mount.get("readOnly") is not True
    _assert_hardened(_pod(job))


def test_pinned_export_does_not_promote(model: ModelIdentity, settings: OperatorSettings) -> None:
    job = builders.build_export_job(model, make_spec(), settings, "a" * 16, promote=False)
    assert "--promote" not in _pod(job)["containers"][0]["args"]


def test_hub_token_only_through_a_secret_reference(model: ModelIdentity, settings: OperatorSettings) -> None:
    spec = make_spec(
        source={"huggingFace": {"repo": "org/gated", "tokenSecretRef": {"name": "hf", "key": "token"}}}
    )
    job = builders.build_export_job(model, spec, settings, "a" * 16, promote=True)
    env = {e["name"]: e for e in _pod(job)["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    assert all("value" not in e or "token" not in str(e["value"]).lower() for e in env.values())
    no_token = builders.build_export_job(model, make_spec(), settings, "a" * 16, promote=True)
    assert "HF_TOKEN" not in json.dumps(no_token)


def test_local_source_reads_from_the_volume(model: ModelIdentity, settings: OperatorSettings) -> None:
    spec = make_spec(source={"localPath": "uploads/my-model"}, servedName="mine")
    args = _pod(builders.build_export_job(model, spec, settings, "a" * 16, promote=True))["containers"][0][
        "args"
    ]
    assert args[:3] == ["export", "--source", "/models/uploads/my-model"]
    assert args[args.index("--name") + 1] == "mine"


def test_promote_job_points_current_at_a_version(model: ModelIdentity, settings: OperatorSettings) -> None:
    job = builders.build_promote_job(model, make_spec(), settings, 2)
    container = _pod(job)["containers"][0]
    assert container["args"] == [
        "promote", "--repository", "/models", "--name", "test-org/minilm-reranker", "--version", "2",
    ]  # fmt: skip
    assert job["metadata"]["name"] == "minilm-promote-v2-g3"


def test_pvc_policy_decides_ownership(model: ModelIdentity, settings: OperatorSettings) -> None:
    retained = builders.build_pvc(model, make_spec(storage={"size": "2Gi"}), settings)
    assert retained is not None
    assert "ownerReferences" not in retained["metadata"]  # survives the RerankModel
    assert retained["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "2Gi"}},
    }
    deleted = builders.build_pvc(model, make_spec(storage={"deletePolicy": "Delete"}), settings)
    assert deleted is not None
    assert deleted["metadata"]["ownerReferences"][0]["uid"] == model.uid
    assert builders.build_pvc(model, make_spec(storage={"existingClaim": "shared"}), settings) is None
    by_default = OperatorSettings(pvc_delete_policy="Delete")
    defaulted = builders.build_pvc(model, make_spec(), by_default)
    assert defaulted is not None and "ownerReferences" in defaulted["metadata"]


def test_existing_claim_is_mounted(model: ModelIdentity, settings: OperatorSettings) -> None:
    spec = make_spec(storage={"existingClaim": "shared-models"})
    claim = next(
        v for v in _pod(builders.build_deployment(model, spec, settings))["volumes"] if v["name"] == "models"
    )
    assert claim["persistentVolumeClaim"]["claimName"] == "shared-models"


def test_api_key_is_a_mounted_secret(model: ModelIdentity, settings: OperatorSettings) -> None:
    spec = make_spec(
        runtime={"apiKeySecretRef": {"name": "rerank-key", "key": "api-key"}, "maxBatchTokens": 4096}
    )
    container = _pod(builders.build_deployment(model, spec, settings))["containers"][0]
    assert container["args"][-2:] == ["--api-key-file", "/etc/rerank/api-key/api-key"]
    assert {"name": "RERANK_RUNTIME_MAX_BATCH_TOKENS", "value": "4096"} in container["env"]


def test_service_forwards_the_port(model: ModelIdentity) -> None:
    service = builders.build_service(model, make_spec(service={"type": "NodePort", "port": 9000}))
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_long_names_stay_within_63_characters(settings: OperatorSettings) -> None:
    long_model = ModelIdentity(name="a" * 80 + "-x", namespace="ns", uid="u", generation=12345)
    other = ModelIdentity(name="a" * 80 + "-y", namespace="ns", uid="u", generation=12345)
    name = export_job_name(long_model, "0123456789abcdef")
    assert len(name) <= 63 and name.endswith("-export-01234567-g12345")
    assert name != export_job_name(other, "0123456789abcdef")
    deployment = builders.build_deployment(long_model, make_spec(), settings)
    assert len(deployment["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in _pod_labels(deployment).values())


def _pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return labels


def test_jobs_use_the_export_image_and_pods_the_runtime_image(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    # The runtime image has no torch/optimum: an export Job on it could never convert a model.
    spec = make_spec()
    export = _pod(builders.build_export_job(model, spec, settings, "0123456789abcdef", promote=True))
    deployment = _pod(builders.build_deployment(model, spec, settings))
    assert (
        export["containers"][0]["image"]
        == settings.export_image
        == "ghcr.io/rerank-operator/rerank-export:0.1.0"
    )
    assert (
        deployment["containers"][0]["image"]
        == settings.runtime_image
        == "ghcr.io/rerank-operator/rerank-runtime:0.1.0"
    )

    chosen = make_spec(
        export={"image": "registry.example/export:1"}, runtime={"image": "registry.example/rt:1"}
    )
    assert (
        _pod(builders.build_export_job(model, chosen, settings, "0123456789abcdef", promote=True))[
            "containers"
        ][0]["image"]
        == "registry.example/export:1"
    )
    assert _pod(builders.build_deployment(model, chosen, settings))["containers"][0]["image"] == (
        "registry.example/rt:1"
    )
