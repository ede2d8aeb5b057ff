"""Pytest helpers for the real-node tier (loaded as a plugin by tests/conftest.py).

* ``node_cluster_context``: a control plane plus a real node (:mod:`tests.support.node`): containerd, runc,
  CNI bridge, kubelet, kube-proxy, kube-scheduler and CoreDNS. Reuses the one ``make cluster-up NODE=1``
  started when ``KUBECONFIG`` points at it; otherwise starts one (building what is missing first) and always
  tears it down, host changes included. A node left behind by a crashed run is cleaned up first.
  tests/node/conftest.py exposes it as the ``node_cluster`` fixture.

Tests that use ``node_cluster`` are marked ``node`` automatically.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import ControlPlane, ensure_binaries, register_cleanup, unregister_cleanup
from tests.support.kubelet import KubeRest
from tests.support.node import (
    Node,
    NodeError,
    ensure_node_binaries,
    host_snapshot,
    snapshot_difference,
    start_cluster_with_node,
)

NODE_FIXTURES = frozenset({"node_cluster"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the real node as ``node``."""
    for item in items:
        if set(getattr(item, "fixturenames", ())) & NODE_FIXTURES and item.get_closest_marker("node") is None:
            item.add_marker(pytest.mark.node)


@dataclass
class NodeCluster:
    """A control plane with a real node, and admin tools bound to it."""

    plane: ControlPlane
    node: Node
    helm_home: Path

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def rest(self) -> KubeRest:
        pki = self.plane.state_dir / "pki"
        return KubeRest(
            self.plane.server,
            ca_file=str(pki / "ca.crt"),
            cert_file=str(pki / "admin.crt"),
            key_file=str(pki / "admin.key"),
        )

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm subprocesses."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env["PATH"] = f"{self.plane.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        for variable in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[variable] = str(self.helm_home / variable.lower())
        return env

    def run(
        self, tool: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> str:
        """Run ``kubectl`` or ``helm`` against the cluster; returns stdout, raises when ``check`` fails."""
        result = subprocess.run(
            [str(self.plane.bin_dir / tool), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.run("kubectl", *args, input=input, check=check)

    def import_image(self, archive: Path) -> bool:
        """Import an image archive into the node's containerd unless that image ID is there already."""
        return self.node.import_image(archive)


def _reusable_node_cluster() -> tuple[ControlPlane, Node] | None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or os.pathsep in kubeconfig:
        return None
    plane = ControlPlane.attach(Path(kubeconfig).resolve().parent)
    node = Node.attach()
    if plane is None or not plane.node_ip or node is None or not node.healthy() or not plane.healthy():
        return None
    return plane, node


@contextlib.contextmanager
def node_cluster_context(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeCluster]:
    """The control plane + real node: reused from ``make cluster-up NODE=1`` or started (and torn down) here.

    tests/node/conftest.py turns it into the package-scoped ``node_cluster`` fixture, so the node is gone as
    soon as the node tier is done instead of idling through the rest of the session."""
    reused = _reusable_node_cluster()
    helm_home = tmp_path_factory.mktemp("node-helm")
    if reused is not None:
        yield NodeCluster(*reused, helm_home=helm_home)
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        ensure_binaries()
        ensure_node_binaries()  # first time: Go builds and apt-get (minutes); progress goes to the terminal
        leftover = Node.attach()
        if leftover is not None:
            if leftover.healthy() and not leftover.orphaned():
                raise NodeError(
                    f"a node from another run is up ({leftover.node_dir}); export its KUBECONFIG to reuse it "
                    "or stop it with `make cluster-down`"
                )
            print("\nnode: cleaning up after a crashed run", file=sys.stderr)
            if problems := leftover.teardown():
                raise NodeError(f"could not clean up the previous node: {problems[0]}")
    before = host_snapshot()
    started = time.monotonic()
    plane, node = start_cluster_with_node(tmp_path_factory.mktemp("node-control-plane"), detached=False)
    sys.stderr.write(f"\nnode: control plane and node up in {time.monotonic() - started:.1f}s\n")

    def teardown() -> None:
        problems = node.teardown()
        plane.stop()
        # Everything the node changed on the host is back as it was (interfaces, chains, sysctls, mounts...).
        problems += snapshot_difference(before, host_snapshot())
        if problems:
            raise NodeError(f"node teardown left: {'; '.join(problems)}")

    register_cleanup(teardown)
    try:
        yield NodeCluster(plane, node, helm_home=helm_home)
    finally:
        unregister_cleanup(teardown)
        teardown()


def wait_pods_ready(
    cluster: NodeCluster, namespace: str, selector: str, count: int, timeout: float = 120
) -> list[Any]:
    """Wait until ``count`` pods matching ``selector`` are Ready; returns them."""
    deadline = time.monotonic() + timeout
    pods: list[Any] = []
    while time.monotonic() < deadline:
        pods = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
        ready = [
            p
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]
        if len(ready) >= count:
            return ready
        time.sleep(0.5)
    states = [(p["metadata"]["name"], p.get("status", {}).get("containerStatuses")) for p in pods]
    raise AssertionError(f"pods {selector} in {namespace} not Ready after {timeout}s: {states}")
