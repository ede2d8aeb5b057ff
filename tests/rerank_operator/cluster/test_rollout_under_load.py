"""A rollout and a scale-down under steady load fail no request (process kubelet, real rerank-serve pods).

The load client routes like kube-proxy: to the ready, non-terminating runtime pods, from a snapshot refreshed
once a second, so a pod that starts terminating still receives requests for up to a second. The operator's
`rerank-serve --shutdown-delay` keeps such a pod serving (not ready) for longer than that before it drains;
without it the pod's listener closes at once and those requests are refused.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from tests.rerank_operator.cluster.test_lifecycle import (  # noqa: F401 (the fixture is used by name)
    Cluster,
    cluster,
    model_body,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

ENDPOINT_LAG_SECONDS = 1.0
SHUTDOWN_DELAY_SECONDS = 4
REQUEST = {"model": "minilm", "query": "what is a reranker?", "documents": ["it orders documents", "a fish"]}


@dataclass
class LoadClient:
    """Clients calling the Service's endpoints as kube-proxy would route them, counting every outcome."""

    cluster: Cluster
    endpoints: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def _refresh(self) -> None:
        while not self.stopped.is_set():
            pods = self.cluster.kube.get(
                self.cluster.path("pods"), labelSelector="app.kubernetes.io/component=runtime"
            )["items"]
            self.endpoints = sorted(
                f"http://{p['status']['podIP']}:8000"
                for p in pods
                if not p["metadata"].get("deletionTimestamp")
                and p.get("status", {}).get("podIP")
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions") or []
                )
            )
            self.stopped.wait(ENDPOINT_LAG_SECONDS)

    def _call(self) -> None:
        counter = itertools.count()
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                endpoints = self.endpoints
                if not endpoints:
                    time.sleep(0.05)
                    continue
                url = endpoints[next(counter) % len(endpoints)]
                try:
                    response = client.post(f"{url}/v1/rerank", json=REQUEST)
                except httpx.HTTPError as error:
                    self.outcomes["error"] += 1
                    self.failures.append(f"{url}: {type(error).__name__}: {error}")
                    continue
                self.outcomes[str(response.status_code)] += 1
                if response.status_code == 200:
                    self.served_by[url] += 1
                else:
                    self.failures.append(f"{url}: HTTP {response.status_code} {response.text[:200]}")

    def start(self, clients: int = 3) -> LoadClient:
        threading.Thread(target=self._refresh, daemon=True).start()
        for _ in range(clients):
            threading.Thread(target=self._call, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()


def _runtime_pods(seen: Cluster) -> list[str]:
    pods = seen.kube.get(seen.path("pods"), labelSelector="app.kubernetes.io/component=runtime")["items"]
    return sorted(p["metadata"]["name"] for p in pods)


def test_rollout_and_scale_down_fail_no_request(cluster: Cluster) -> None:  # noqa: F811
    name = "minilm"
    cluster.kubelet.grace_cap = 60.0  # honour the pod's grace period (delay + drain), as a kubelet does
    cluster.start_operator()
    body = model_body(name)
    body["spec"]["storage"]["accessMode"] = "ReadWriteMany"
    body["spec"]["runtime"]["replicas"] = 2
    body["spec"]["runtime"]["shutdownDelaySeconds"] = SHUTDOWN_DELAY_SECONDS
    cluster.kube.request("POST", cluster.path("rerankmodels"), body)
    status = cluster.wait_serving(name, 1, timeout=240)
    wait_for("two ready replicas", lambda: cluster.status(name).get("readyReplicas") == 2, 120)
    before = _runtime_pods(cluster)
    print(f"\n[load] serving {status['servingVersion']} on {before}")

    load = LoadClient(cluster).start()
    wait_for("requests flowing", lambda: sum(load.served_by.values()) >= 20, 60)

    # -- rollout: a template change replaces both pods one by one (maxSurge 1, maxUnavailable 0) -----------
    env = [*body["spec"]["runtime"]["env"], {"name": "RERANK_ROLLOUT_MARK", "value": "2"}]
    cluster.patch_spec(name, {"runtime": {"env": env}})
    wait_for(
        "both old pods replaced",
        lambda: (
            not set(before) & set(_runtime_pods(cluster)) and cluster.status(name).get("readyReplicas") == 2
        ),
        240,
        interval=0.5,
    )
    after_rollout = _runtime_pods(cluster)
    wait_for("the new pods serve", lambda: sum(load.served_by[u] for u in load.endpoints) >= 10, 60)

    # -- scale-down: one pod terminates while the load goes on ---------------------------------------------
    cluster.patch_spec(name, {"runtime": {"replicas": 1}})
    wait_for("one pod left", lambda: len(_runtime_pods(cluster)) == 1, 120, interval=0.5)
    time.sleep(2)
    load.stop()

    total = sum(load.outcomes.values())
    print(f"[load] {total} requests, outcomes {dict(load.outcomes)}, pods after rollout {after_rollout}")
    print(f"[load] served by {dict(load.served_by)}")
    assert total >= 50
    assert load.failures == [], load.failures[:10]
