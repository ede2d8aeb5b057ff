"""Pytest fixtures for tests that need the real control plane (loaded as a plugin by tests/conftest.py).

Nothing here starts unless a test asks for one of these fixtures; such tests are marked ``cluster``
automatically, so ``-m "not cluster"`` runs never pay for the control plane.

* ``control_plane`` (session): a running :class:`~tests.support.controlplane.ControlPlane` (``.kubeconfig``,
  ``.bin_dir``, ``.server``). Reuses the one ``make cluster-up`` started when ``KUBECONFIG`` points at it,
  otherwise starts one for the session (building the binaries first when they are missing). While it is up,
  ``KUBECONFIG`` is set and ``kubectl``/``helm`` are first on ``PATH`` for subprocesses.
* ``kube_api`` (session): admin ``kubernetes.client.ApiClient``; ``kube_rest`` (session): admin
  :class:`~tests.support.kubelet.KubeRest` (raw JSON, handy for status subresources and unusual requests).
* ``namespace`` (function): a fresh namespace whose ``default`` ServiceAccount exists; deleted afterwards.
* ``kubectl`` (session): ``kubectl(*args, input=None, check=True) -> str`` (stdout).
* ``install_crds`` (session): ``install_crds(*paths) -> list[str]`` server-side applies CRD manifests and
  waits until they are Established.
* ``run_operator`` (function): ``run_operator(*args, command=None, env=None) -> OperatorProcess`` runs
  ``rerank-operator ARGS`` (or ``command``) against the control plane; stopped after the test.
* ``impersonate`` (function): ``impersonate(service_account, namespace) -> ApiClient`` authenticated as that
  ServiceAccount with a TokenRequest token (the ServiceAccount is created when missing).
* ``process_kubelet`` (function): a started :class:`~tests.support.kubelet.ProcessKubelet` so pods run.
  Its ``extra_env`` and ``image_entrypoints`` dicts may be changed by the test; they apply to containers
  started afterwards. ``claim_dir(ns, claim)`` is a PVC's data, ``logs(ns, pod)`` a container's output.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.controlplane import (
    ControlPlane,
    binaries_dir,
    ensure_binaries,
    missing_binaries,
    register_cleanup,
    unregister_cleanup,
)
from tests.support.kubelet import KubeApiError, KubeRest, ProcessKubelet

CLUSTER_FIXTURES = frozenset(
    {
        "control_plane",
        "kube_api",
        "kube_rest",
        "namespace",
        "kubectl",
        "install_crds",
        "run_operator",
        "impersonate",
        "process_kubelet",
    }
)
FIELD_MANAGER = "rerank-tests"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a cluster fixture as ``cluster`` (so marker selection sees it)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & CLUSTER_FIXTURES and item.get_closest_marker("cluster") is None:
            item.add_marker(pytest.mark.cluster)


def _reusable_control_plane() -> ControlPlane | None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or os.pathsep in kubeconfig:
        return None
    plane = ControlPlane.attach(Path(kubeconfig).resolve().parent)
    # A control plane with a real node (make cluster-up NODE=1) has its own scheduler and kubelet, which would
    # race the process kubelet for pods: the cluster tier starts its own plane then.
    if plane is None or plane.node_ip or not plane.healthy():
        return None
    return plane


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """The session's control plane: reused from ``make cluster-up`` or started (and always stopped) here."""
    plane = _reusable_control_plane()
    owned = plane is None
    if plane is None:
        bin_dir = binaries_dir()
        if missing_binaries(bin_dir):
            capture = request.config.pluginmanager.getplugin("capturemanager")
            # The first build takes many minutes: let its progress messages reach the terminal.
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                print("\ncontrol plane binaries missing: building them (first time only)", file=sys.stderr)
                bin_dir = ensure_binaries()
        plane = ControlPlane(state_dir=tmp_path_factory.mktemp("control-plane"), bin_dir=bin_dir)
        plane.start()
    helm_home = tmp_path_factory.mktemp("helm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(plane.kubeconfig))
        patch.setenv("PATH", f"{plane.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        for variable in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            patch.setenv(variable, str(helm_home / variable.lower()))
        try:
            yield plane
        finally:
            if owned:
                plane.stop()


@pytest.fixture(scope="session")
def kube_rest(control_plane: ControlPlane) -> KubeRest:
    """Admin raw-JSON client."""
    pki = control_plane.state_dir / "pki"
    return KubeRest(
        control_plane.server,
        ca_file=str(pki / "ca.crt"),
        cert_file=str(pki / "admin.crt"),
        key_file=str(pki / "admin.key"),
    )


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[Any]:
    """Admin ``kubernetes.client.ApiClient`` built from the control plane's kubeconfig."""
    from kubernetes import config  # only cluster tests pay for importing the client

    new_client: Callable[..., Any] = config.new_client_from_config
    client = new_client(config_file=str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "test"
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_rest: KubeRest) -> Iterator[str]:
    """A fresh namespace named after the test, with its ``default`` ServiceAccount; deleted afterwards."""
    name = _namespace_name(request.node.name)
    kube_rest.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    # Pods are rejected until the serviceaccount controller created "default" (ServiceAccount admission).
    deadline = time.monotonic() + 30
    while True:
        try:
            kube_rest.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            break
        except KubeApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield name
    finally:
        # Not waited for: the namespace controller finishes the deletion in the background.
        with contextlib.suppress(KubeApiError):
            kube_rest.request("DELETE", f"/api/v1/namespaces/{name}", {"propagationPolicy": "Background"})


class Kubectl(Protocol):
    """Signature of the ``kubectl`` fixture."""

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str: ...


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """Run the pinned kubectl against the control plane; returns stdout, raises on failure when ``check``."""

    def run(*args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(control_plane.bin_dir / "kubectl"), f"--kubeconfig={control_plane.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    return run


def _load_documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _serves_resources(kube_rest: KubeRest, crd: dict[str, Any]) -> bool:
    # Established can precede the moment the new REST endpoint answers; list once to be sure it does.
    spec = crd["spec"]
    version = next(v["name"] for v in spec["versions"] if v.get("served"))
    try:
        kube_rest.get(f"/apis/{spec['group']}/{version}/{spec['names']['plural']}", limit="1")
    except KubeApiError:
        return False
    return True


GC_PROBE_GROUP = "probe.test.rerank.dev"


def _gc_probe_crd() -> dict[str, Any]:
    """A throwaway kind, new to the garbage collector: it learns it in the same discovery pass as the CRDs
    applied just before it (a kind it knew already would prove nothing about them)."""
    suffix = secrets.token_hex(4)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gcprobes{suffix}.{GC_PROBE_GROUP}"},
        "spec": {
            "group": GC_PROBE_GROUP,
            "names": {
                "kind": f"GCProbe{suffix}",
                "plural": f"gcprobes{suffix}",
                "singular": f"gcprobe{suffix}",
                "listKind": f"GCProbe{suffix}List",
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


def _wait_for_garbage_collector(
    kube_rest: KubeRest, probe_crd: dict[str, Any], timeout: float = 75.0
) -> None:
    """Wait until the garbage collector watches the newest CRDs.

    kube-controller-manager re-reads discovery every 30 s; until then it cannot resolve owners of a new kind,
    and dependents of an owner deleted in that window may never be collected. A probe kind installed after the
    CRDs under test is known to the collector exactly when they are: delete a probe owner and watch its
    dependent go.
    """
    names = probe_crd["spec"]["names"]
    probes = f"/apis/{GC_PROBE_GROUP}/v1/namespaces/default/{names['plural']}"
    deadline = time.monotonic() + timeout
    for attempt in itertools.count():
        name = f"{names['singular']}-{attempt}"
        kind = {"apiVersion": f"{GC_PROBE_GROUP}/v1", "kind": names["kind"]}
        owner = kube_rest.request("POST", probes, {**kind, "metadata": {"name": name}})
        reference = {**kind, "name": name, "uid": owner["metadata"]["uid"]}
        dependent = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "ownerReferences": [reference]},
        }
        kube_rest.request("POST", "/api/v1/namespaces/default/configmaps", dependent)
        kube_rest.request("DELETE", f"{probes}/{name}")
        collected_by = time.monotonic() + 3.0
        while time.monotonic() < collected_by:
            try:
                kube_rest.get(f"/api/v1/namespaces/default/configmaps/{name}")
            except KubeApiError as error:
                if error.status == 404:
                    return
                raise
            time.sleep(0.1)
        with contextlib.suppress(KubeApiError):
            kube_rest.request("DELETE", f"/api/v1/namespaces/default/configmaps/{name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the garbage collector did not pick up new CRDs within {timeout}s")


@pytest.fixture(scope="session")
def install_crds(kube_rest: KubeRest) -> Callable[..., list[str]]:
    """``install_crds(*paths)``: server-side apply CRD files (multi-document YAML), wait until Established
    and until the garbage collector can resolve owners of the new kinds; returns the CRD names."""

    def install(*paths: str | Path, timeout: float = 30.0) -> list[str]:
        names: list[str] = []
        documents = [d for path in paths for d in _load_documents(Path(path))]
        probe_crd = _gc_probe_crd()
        for document in [*documents, probe_crd]:
            if document.get("kind") != "CustomResourceDefinition":
                continue
            name = document["metadata"]["name"]
            kube_rest.request(
                "PATCH",
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                document,
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
                content_type="application/apply-patch+yaml",
            )
            names.append(name)
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                crd = kube_rest.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                conditions = {
                    c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []
                }
                if conditions.get("Established") == "True" and _serves_resources(kube_rest, crd):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {name} not Established after {timeout}s: {conditions}")
                time.sleep(0.05)
        # The probe CRD stays: deleting a CRD leaves the collector with a monitor whose list fails until its
        # next discovery pass, and it stalls collection meanwhile.
        _wait_for_garbage_collector(kube_rest, probe_crd)
        return names[:-1]

    return install


@dataclass
class OperatorProcess:
    """A running operator process (own process group); its output goes to ``log_path``."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)

    def logs(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches the regular expression ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := regex.search(self.logs()):
                return match
            if self.popen.poll() is not None:
                raise AssertionError(f"operator exited with {self.popen.returncode}:\n{self.logs()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(
            f"operator log did not match {pattern!r} within {timeout}s:\n{self.logs()[-3000:]}"
        )

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL after ``timeout``; returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.wait()


class RunOperator(Protocol):
    """Signature of the ``run_operator`` fixture."""

    def __call__(
        self, *args: str, command: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> OperatorProcess: ...


@pytest.fixture
def run_operator(control_plane: ControlPlane, tmp_path: Path) -> Iterator[RunOperator]:
    """Start ``rerank-operator ARGS`` (or ``command``) with the admin kubeconfig; stopped after the test."""
    started: list[OperatorProcess] = []

    def run(
        *args: str, command: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> OperatorProcess:
        argv = (
            list(command) if command is not None else [str(Path(sys.executable).parent / "rerank-operator")]
        )
        argv += list(args)
        log_path = tmp_path / f"operator-{len(started)}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), **(env or {})},
                start_new_session=True,
            )
        process = OperatorProcess(popen, log_path, argv)
        register_cleanup(process.stop)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()
        unregister_cleanup(process.stop)


@pytest.fixture
def impersonate(kube_api: Any, kube_rest: KubeRest) -> Iterator[Callable[[str, str], Any]]:
    """``impersonate(service_account, namespace)`` → ApiClient that authenticates as that ServiceAccount.

    It uses a real token from the TokenRequest API, so RBAC sees exactly what a pod running as the
    ServiceAccount would be (user ``system:serviceaccount:NS:NAME`` and its groups).
    """
    from kubernetes import client

    clients: list[Any] = []

    def make(service_account: str, namespace: str) -> Any:
        with contextlib.suppress(KubeApiError):  # 409: it exists already
            kube_rest.request(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account}},
            )
        token = kube_rest.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )["status"]["token"]
        admin = kube_api.configuration
        configuration = client.Configuration(host=admin.host, api_key={"authorization": f"Bearer {token}"})
        configuration.ssl_ca_cert = admin.ssl_ca_cert
        api_client = client.ApiClient(configuration)
        clients.append(api_client)
        return api_client

    yield make
    for api_client in clients:
        api_client.close()


@pytest.fixture
def process_kubelet(kube_rest: KubeRest, tmp_path: Path) -> Iterator[ProcessKubelet]:
    """A started :class:`ProcessKubelet` (own node); all its processes and pods are gone after the test."""
    kubelet = ProcessKubelet(kube_rest, tmp_path / "kubelet")
    kubelet.start()
    register_cleanup(kubelet.stop)
    try:
        yield kubelet
    finally:
        kubelet.stop()
        unregister_cleanup(kubelet.stop)
