"""The process kubelet runs real Job and Deployment pods for the real controllers."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.kubelet import KubeRest, ProcessKubelet
from tests.support.polling import wait_for

pytestmark = pytest.mark.cluster


def pods_of(kube_rest: KubeRest, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods matching a label selector."""
    items: list[dict[str, Any]] = kube_rest.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector
    )["items"]
    return items


def job_outcome(kube_rest: KubeRest, namespace: str, name: str) -> str:
    """Wait until the Job controller marks the Job Complete or Failed; returns which."""

    def finished() -> str | None:
        status = kube_rest.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}").get("status", {})
        for condition in status.get("conditions", []):
            if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
                return str(condition["type"])
        return None

    outcome: str = wait_for(finished, 60, f"Job {name} to finish")
    return outcome


WRITER = """
import json, pathlib, sys
out = pathlib.Path('/data/out')
out.mkdir()
(out / 'result.txt').write_text('written by ' + sys.argv[1])
pathlib.Path('/dev/termination-log').write_text(json.dumps({'name': sys.argv[1], 'version': 7}))
"""


def test_job_writes_to_its_claim_and_reports_termination_message(
    kube_rest: KubeRest, namespace: str, process_kubelet: ProcessKubelet
) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    kube_rest.request("POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", claim)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "export"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "export",
                            "image": "example.invalid/exporter:1",
                            "command": ["python", "-c", WRITER],
                            "args": ["$(MODEL_NAME)"],
                            "env": [{"name": "MODEL_NAME", "value": "tiny-model"}],
                            "volumeMounts": [{"name": "models", "mountPath": "/data", "subPath": "repo"}],
                        }
                    ],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
                }
            },
        },
    }
    kube_rest.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)

    assert job_outcome(kube_rest, namespace, "export") == "Complete"
    [pod] = pods_of(kube_rest, namespace, "job-name=export")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert json.loads(terminated["message"]) == {"name": "tiny-model", "version": 7}
    written = process_kubelet.claim_dir(namespace, "models") / "repo" / "out" / "result.txt"
    assert written.read_text() == "written by tiny-model"
    claim_status = kube_rest.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/models")["status"]
    assert claim_status["phase"] == "Bound"
    # The termination log lived only inside the pod's private mount namespace.
    assert not Path("/dev/termination-log").exists()


def test_failed_job_pod_reports_exit_code_and_message(
    kube_rest: KubeRest, namespace: str, process_kubelet: ProcessKubelet
) -> None:
    script = "import sys; open('/dev/termination-log', 'w').write('error: no such model'); sys.exit(3)"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "broken"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "x", "command": ["python", "-c", script]}],
                }
            },
        },
    }
    kube_rest.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)

    assert job_outcome(kube_rest, namespace, "broken") == "Failed"
    [pod] = pods_of(kube_rest, namespace, "job-name=broken")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (3, "error: no such model")


def test_deployment_pod_becomes_ready_through_its_http_probe(
    kube_rest: KubeRest, namespace: str, process_kubelet: ProcessKubelet, tmp_path: Path
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "example.invalid/web:1",
                            # The page only exists once the server runs, so Ready proves the probe hit it.
                            "command": [
                                "sh",
                                "-c",
                                "echo $(POD_NAME) > /srv/index.html && "
                                "exec python -m http.server 8000 --directory /srv",
                            ],
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                }
                            ],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/index.html", "port": "http"},
                                "periodSeconds": 5,
                            },
                            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}],
                        }
                    ],
                    "volumes": [{"name": "srv", "emptyDir": {}}],
                },
            },
        },
    }
    kube_rest.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)

    def available() -> bool:
        status = kube_rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web").get("status", {})
        return bool(status.get("availableReplicas") == 2)

    wait_for(available, 60, "the Deployment to have 2 available replicas")
    pods = pods_of(kube_rest, namespace, "app=web")
    assert len(pods) == 2
    addresses = {pod["status"]["podIP"] for pod in pods}
    assert len(addresses) == 2, "each pod has its own address"
    for pod in pods:
        ip = pod["status"]["podIP"]
        assert ip.startswith("127.")
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"]
        assert ready == "True"
        connection = http.client.HTTPConnection(ip, 8000, timeout=5)
        connection.request("GET", "/index.html")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read().decode().strip() == pod["metadata"]["name"]
        connection.close()


def test_deleted_pod_process_is_killed(
    kube_rest: KubeRest, namespace: str, process_kubelet: ProcessKubelet
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {"name": "main", "image": "x", "command": ["python", "-c", "import time; time.sleep(600)"]}
            ],
        },
    }
    kube_rest.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def running_pid() -> int | None:
        status = kube_rest.get(f"/api/v1/namespaces/{namespace}/pods/sleeper").get("status", {})
        statuses = status.get("containerStatuses") or [{}]
        if "running" not in statuses[0].get("state", {}):
            return None
        return int(statuses[0]["containerID"].removeprefix("process://"))

    pid = wait_for(running_pid, 30, "the pod to run")
    assert Path(f"/proc/{pid}").exists()
    kube_rest.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/sleeper")

    def gone() -> bool:
        names = [
            p["metadata"]["name"] for p in kube_rest.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        ]
        return "sleeper" not in names

    wait_for(gone, 30, "the pod object to be removed")
    assert not Path(f"/proc/{pid}").exists()


API_CALLER = """
import json, os, pathlib, ssl, urllib.error, urllib.request
account = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount')
namespace = (account / 'namespace').read_text()
url = 'https://{}:{}/api/v1/namespaces/{}/secrets'.format(
    os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'], namespace)
request = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + (account / 'token').read_text()})
context = ssl.create_default_context(cafile=str(account / 'ca.crt'))
try:
    urllib.request.urlopen(request, context=context)
    answer = 'allowed'
except urllib.error.HTTPError as error:
    answer = json.load(error)['message']
pathlib.Path('/dev/termination-log').write_text(json.dumps({
    'token_file': pathlib.Path('/etc/hf/token').read_text(),
    'token_env': os.environ['HF_TOKEN'],
    'api': answer,
}))
"""


def test_pod_waits_for_its_secret_and_uses_its_service_account_token(
    kube_rest: KubeRest, namespace: str, process_kubelet: ProcessKubelet
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "caller"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "x",
                    "command": ["python", "-c", API_CALLER],
                    "env": [
                        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
                    ],
                    "volumeMounts": [{"name": "hf", "mountPath": "/etc/hf", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "hf", "secret": {"secretName": "hf"}}],
        },
    }
    kube_rest.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def waiting_reason() -> str | None:
        status = kube_rest.get(f"/api/v1/namespaces/{namespace}/pods/caller").get("status", {})
        statuses = status.get("containerStatuses") or [{}]
        reason: str | None = statuses[0].get("state", {}).get("waiting", {}).get("reason")
        return reason

    assert wait_for(waiting_reason, 30, "the pod to wait") == "CreateContainerConfigError"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf"},
        "stringData": {"token": "hf_abc"},
    }
    kube_rest.request("POST", f"/api/v1/namespaces/{namespace}/secrets", secret)

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = kube_rest.get(f"/api/v1/namespaces/{namespace}/pods/caller")["status"]
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, 30, "the pod to finish")
    assert status["phase"] == "Succeeded", process_kubelet.logs(namespace, "caller")
    report = json.loads(status["containerStatuses"][0]["state"]["terminated"]["message"])
    assert report["token_file"] == report["token_env"] == "hf_abc"
    # The API server authenticated the projected token as the ServiceAccount, which may not list Secrets.
    assert f'"system:serviceaccount:{namespace}:default" cannot list resource "secrets"' in report["api"]


def test_crashing_container_of_a_deployment_pod_is_restarted(
    kube_rest: KubeRest, namespace: str, process_kubelet: ProcessKubelet
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crasher"},
        "spec": {
            "containers": [{"name": "main", "image": "x", "command": ["python", "-c", "raise SystemExit(4)"]}]
        },
    }
    kube_rest.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def restarted_twice() -> dict[str, Any] | None:
        status = kube_rest.get(f"/api/v1/namespaces/{namespace}/pods/crasher").get("status", {})
        statuses = status.get("containerStatuses") or [{}]
        return statuses[0] if statuses[0].get("restartCount", 0) >= 2 else None

    container = wait_for(restarted_twice, 30, "two restarts")
    assert container["lastState"]["terminated"]["exitCode"] == 4
    pod_status = kube_rest.get(f"/api/v1/namespaces/{namespace}/pods/crasher")["status"]
    assert pod_status["phase"] == "Running"
    assert {c["type"]: c["status"] for c in pod_status["conditions"]}["Ready"] == "False"
