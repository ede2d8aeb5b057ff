"""The chart's optional monitoring objects: a PodMonitor for the runtime pods and the Grafana dashboard.

Rendered with the real `helm template`; the PodMonitor's selector is checked against the labels the operator
really puts on runtime pods (the Deployment builder), and its port against the runtime container's port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank_operator import builders
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity
from tests.rerank_operator.conftest import make_spec
from tests.support.controlplane import binaries_dir

CHART = Path(__file__).resolve().parents[2] / "charts" / "rerank-operator"
DASHBOARD = CHART / "dashboards" / "rerank-runtime.json"


@pytest.fixture(scope="module")
def helm() -> str:
    found = shutil.which("helm") or str(binaries_dir() / "helm")
    if not os.access(found, os.X_OK):
        pytest.skip("helm is not built yet (make control-plane)")
    return found


def _template(helm: str, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [helm, "template", "rerank", str(CHART), "--namespace", "ops", "--kube-version", "1.34.0", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {doc["kind"] for doc in docs}


def test_monitoring_is_off_by_default(helm: str) -> None:
    docs = _template(helm)
    assert "PodMonitor" not in _kinds(docs)
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "rerank-runtime.json" in d.get("data", {})]


def test_pod_monitor_scrapes_the_runtime_pods_the_operator_creates(
    helm: str, model: ModelIdentity, settings: OperatorSettings
) -> None:
    docs = _template(
        helm,
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.podMonitor.labels.release=prometheus",
    )
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "ops"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}

    deployment = builders.build_deployment(model, make_spec(), settings)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the PodMonitor must select the runtime pods"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"

    # An export Job's pods carry the same model label but serve no metrics: not selected.
    export_labels = {**pod_labels, "app.kubernetes.io/component": "export"}
    assert not selector.items() <= export_labels.items()


def test_pod_monitor_follows_watched_namespaces(helm: str) -> None:
    docs = _template(
        helm, "--set", "monitoring.podMonitor.enabled=true", "--set", "watchNamespaces={team-a,team-b}"
    )
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_dashboard_config_map_carries_the_dashboard_for_the_grafana_sidecar(helm: str) -> None:
    docs = _template(helm, "--set", "monitoring.grafanaDashboard.enabled=true")
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["rerank-runtime.json"]) == json.loads(DASHBOARD.read_text())


def test_bad_monitoring_values_are_refused(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "rerank", str(CHART), "--set", "monitoring.podMonitor.interval=often"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "interval" in result.stderr
