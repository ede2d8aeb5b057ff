"""Pod-level settings of every pod the operator creates: IDs, identity, proxies, disk, placement, shutdown."""

from __future__ import annotations

from typing import Any

import pytest

from rerank_operator import builders
from rerank_operator.builders.runtime import cpu_cores, memory_bytes
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity
from tests.rerank_operator.conftest import make_spec

GIB = 1024**3


def _pods(model: ModelIdentity, settings: OperatorSettings, **spec: Any) -> list[dict[str, Any]]:
    parsed = make_spec(**spec)
    manifests = [
        builders.build_deployment(model, parsed, settings),
        builders.build_export_job(model, parsed, settings, "f" * 16, promote=True),
        builders.build_promote_job(model, parsed, settings, 1),
    ]
    return [m["spec"]["template"]["spec"] for m in manifests]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_fixed_ids_by_default_and_platform_ids_when_unset(model: ModelIdentity) -> None:
    fixed = OperatorSettings(_env_file=None)  # type: ignore[call-arg]
    for pod in _pods(model, fixed):
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    platform = OperatorSettings(_env_file=None, run_as_user="")  # type: ignore[call-arg]
    assert platform.run_as_user is None
    for pod in _pods(model, platform):
        assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_run_as_user_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        OperatorSettings(_env_file=None, run_as_user=0)  # type: ignore[call-arg]


def test_pull_secrets_and_service_accounts_from_spec_else_operator(
    model: ModelIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RERANK_OPERATOR_IMAGE_PULL_SECRETS", "registry-a, registry-b")
    monkeypatch.setenv("RERANK_OPERATOR_RUNTIME_SERVICE_ACCOUNT", "rerank-runtime")
    settings = OperatorSettings(_env_file=None)  # type: ignore[call-arg]
    runtime, export, promote = _pods(model, settings)
    defaults = [{"name": "registry-a"}, {"name": "registry-b"}]
    assert (
        runtime["imagePullSecrets"] == export["imagePullSecrets"] == promote["imagePullSecrets"] == defaults
    )
    assert runtime["serviceAccountName"] == "rerank-runtime"
    assert "serviceAccountName" not in export  # the namespace's default account

    runtime, export, promote = _pods(
        model,
        settings,
        runtime={"serviceAccountName": "serve", "imagePullSecrets": []},
        export={"serviceAccountName": "exporter", "imagePullSecrets": [{"name": "hub-mirror-pull"}]},
    )
    assert runtime["serviceAccountName"] == "serve" and "imagePullSecrets" not in runtime
    assert export["serviceAccountName"] == promote["serviceAccountName"] == "exporter"
    assert export["imagePullSecrets"] == [{"name": "hub-mirror-pull"}]
    # The token stays unmounted: no pod the operator creates talks to the API server.
    assert runtime["automountServiceAccountToken"] is export["automountServiceAccountToken"] is False


def test_export_env_and_ca_bundle_reach_the_exporter(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    spec = make_spec(
        export={
            "env": [
                {"name": "HF_ENDPOINT", "value": "https://hub-mirror.internal"},
                {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                {"name": "HF_HOME", "value": "/cache/hf"},  # replaces the operator's, never duplicates it
            ],
            "caBundle": {"name": "corporate-ca"},
        }
    )
    job = builders.build_export_job(model, spec, settings, "a" * 16, promote=True)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = _env(container)
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))
    assert env["HF_ENDPOINT"] == "https://hub-mirror.internal"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["HF_HOME"] == "/cache/hf"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == "/etc/rerank/ca/ca.crt"
    volume = next(v for v in pod["volumes"] if v["name"] == "ca-bundle")
    assert volume["configMap"] == {"name": "corporate-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert {"name": "ca-bundle", "mountPath": "/etc/rerank/ca", "readOnly": True} in container["volumeMounts"]


def test_export_cache_is_bounded_and_requested(model: ModelIdentity, settings: OperatorSettings) -> None:
    job = builders.build_export_job(model, make_spec(), settings, "a" * 16, promote=True)
    pod = job["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"] == {"sizeLimit": "20Gi"}
    assert pod["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "20Gi"

    spec = make_spec(export={"cacheSize": "6Gi", "resources": {"requests": {"cpu": "2", "memory": "6Gi"}}})
    pod = builders.build_export_job(model, spec, settings, "a" * 16, promote=True)["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "cache")["emptyDir"] == {"sizeLimit": "6Gi"}
    assert pod["containers"][0]["resources"]["requests"] == {
        "cpu": "2",
        "memory": "6Gi",
        "ephemeral-storage": "6Gi",
    }


def test_export_jobs_retry_transient_failures_only(model: ModelIdentity, settings: OperatorSettings) -> None:
    job = builders.build_export_job(model, make_spec(), settings, "a" * 16, promote=True)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"]["values"] == [1, 2]  # permanent; 75 (transient) uses backoffLimit
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_jobs_have_their_own_placement(model: ModelIdentity, settings: OperatorSettings) -> None:
    spread = {"accessMode": "ReadWriteMany"}
    runtime_only = {
        "nodeSelector": {"pool": "serving"},
        "tolerations": [{"key": "serving", "operator": "Exists"}],
    }
    runtime, export, _ = _pods(model, settings, runtime=runtime_only, storage=spread)
    assert export["nodeSelector"] == runtime["nodeSelector"] == {"pool": "serving"}

    own = {"nodeSelector": {"pool": "batch"}, "tolerations": [{"key": "batch", "operator": "Exists"}]}
    runtime, export, promote = _pods(model, settings, runtime=runtime_only, export=own, storage=spread)
    assert runtime["nodeSelector"] == {"pool": "serving"}
    assert export["nodeSelector"] == promote["nodeSelector"] == {"pool": "batch"}
    assert export["tolerations"] == [{"key": "batch", "operator": "Exists"}]
    assert "affinity" not in export  # ReadWriteMany: Jobs need not follow the volume


def test_runtime_keeps_serving_through_endpoint_removal(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    pod = builders.build_deployment(model, make_spec(), settings)["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--shutdown-delay") + 1] == "10"
    # The grace period covers the delay plus rerank-serve's drain timeout, or SIGKILL cuts requests.
    assert pod["terminationGracePeriodSeconds"] == 10 + 30

    pod = builders.build_deployment(model, make_spec(runtime={"shutdownDelaySeconds": 3}), settings)
    args = pod["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--shutdown-delay") + 1] == "3"


def test_quantities() -> None:
    assert (cpu_cores("500m"), cpu_cores("2"), cpu_cores(3), cpu_cores("1.5"), cpu_cores("x")) == (
        0.5,
        2.0,
        3.0,
        1.5,
        None,
    )
    assert (memory_bytes("2Gi"), memory_bytes("512Mi"), memory_bytes("1G"), memory_bytes("1000")) == (
        2 * GIB,
        512 * 1024**2,
        10**9,
        1000,
    )


def test_streams_follow_the_cpu_request(model: ModelIdentity, settings: OperatorSettings) -> None:
    def streams(**runtime: Any) -> str:
        spec = make_spec(runtime=runtime)
        container = builders.build_deployment(model, spec, settings)["spec"]["template"]["spec"][
            "containers"
        ][0]
        return str(_env(container)["RERANK_RUNTIME_NUM_STREAMS"])

    assert streams() == "1"  # the operator's default request is 1 CPU
    assert streams(resources={"requests": {"cpu": "4", "memory": "4Gi"}}) == "4"
    assert streams(resources={"requests": {"cpu": "250m", "memory": "1Gi"}}) == "1"
    assert streams(resources={"limits": {"cpu": "3"}}) == "3"
    # An explicit setting wins, and appears once.
    spec = make_spec(runtime={"env": [{"name": "RERANK_RUNTIME_NUM_STREAMS", "value": "2"}]})
    env = builders.build_deployment(model, spec, settings)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "RERANK_RUNTIME_NUM_STREAMS"] == ["2"]


def test_memory_default_fits_two_versions_during_a_swap(
    model: ModelIdentity, settings: OperatorSettings
) -> None:
    def memory(size: int | None, **runtime: Any) -> dict[str, Any]:
        deployment = builders.build_deployment(model, make_spec(runtime=runtime), settings, size)
        resources: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        return resources

    small = memory(90 * 1024**2)  # MiniLM int8: the operator's defaults already fit
    assert small == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    large = memory(2 * GIB)  # bge-reranker-v2-m3 fp32: old + new loaded at once
    assert large["requests"]["memory"] == "5120Mi"  # 768Mi + 2 x 2Gi, up to a 512Mi step
    assert large["limits"]["memory"] == "7168Mi"  # 768Mi + 3 x 2Gi
    assert memory(2 * GIB + 10 * 1024**2) == large  # a slightly different export rolls no pod
    given = {"requests": {"cpu": "2", "memory": "3Gi"}}
    assert memory(2 * GIB, resources=given) == given  # the user's resources are never changed
