"""GitOps rollouts with a real engine: Flux's source-controller and kustomize-controller (built from their Go
modules by hack/gitops.sh) apply a RerankModel committed to a Git repository served on loopback.

The operator, export Jobs (real `rerank-repo` against the fake hub) and runtime pods (real `rerank-serve`, run
by the process kubelet) are the ones of the lifecycle tier. The Kustomization has ``wait: true``: Flux's own
health assessment (kstatus) reads the RerankModel's status, so the Kustomization must turn Ready only once the
committed spec is served, and must fail when the export of the committed spec fails.

Each scenario prints its timeline: commit -> source fetched -> applied -> RerankModel Ready -> Kustomization
Ready, in seconds from the push.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cohere
import httpx
import pytest
import yaml

from tests.rerank_operator.cluster.test_lifecycle import (
    HUB_REPO,
    Cluster,
    job_complete,
    model_body,
    operator_cluster,
)
from tests.support.cluster_fixtures import RunOperator
from tests.support.controlplane import ControlPlane, register_cleanup, unregister_cleanup
from tests.support.fake_hub import FakeHub
from tests.support.gitops import FluxControllers, GitServer, GitWorkTree, crd_files, ensure_gitops_binaries
from tests.support.kubelet import KubeApiError, KubeRest, ProcessKubelet

pytestmark = [pytest.mark.gitops, pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

MODEL = "minilm"
SOURCE_API = "/apis/source.toolkit.fluxcd.io/v1"
KUSTOMIZE_API = "/apis/kustomize.toolkit.fluxcd.io/v1"
RERANK_API = "/apis/serving.rerank.dev/v1alpha1"
FLUX_NAME = "models"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Bananas are rich in potassium.",
    "France is a country in Western Europe; its capital is Paris.",
]


# -- engine and repository


@pytest.fixture
def flux(
    control_plane: ControlPlane, install_crds: Callable[..., list[str]], tmp_path: Path
) -> Iterator[FluxControllers]:
    """Flux's controllers running against the control plane, their CRDs installed."""
    bin_dir = ensure_gitops_binaries()
    install_crds(*crd_files(bin_dir))
    controllers = FluxControllers(bin_dir, control_plane.kubeconfig, tmp_path / "flux")
    register_cleanup(controllers.stop)
    try:
        controllers.start()
        print(f"\n[flux] controllers ready in {controllers.started_in_seconds:.1f} s")
        yield controllers
    finally:
        controllers.stop()
        unregister_cleanup(controllers.stop)


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """``git http-backend`` on loopback."""
    server = GitServer(tmp_path / "git-server")
    try:
        yield server
    finally:
        server.close()


def rerankmodel_manifest(source: str = HUB_REPO, **export: Any) -> str:
    """The RerankModel as a user commits it (YAML)."""
    body = model_body(MODEL, source={"huggingFace": {"repo": source}})
    body["spec"]["export"].update(export)
    return yaml.safe_dump(body, sort_keys=False)


# -- what the test watches


@dataclass(frozen=True)
class Sample:
    """One look at the engine's objects and the RerankModel, taken in this order."""

    at: float
    source_revision: str
    kustomization: dict[str, Any]
    model: dict[str, Any] | None

    def kustomization_ready(self, sha: str) -> bool:
        status = self.kustomization.get("status") or {}
        ready = _condition(status, "Ready")
        return bool(
            ready and ready["status"] == "True" and status.get("lastAppliedRevision", "").endswith(sha)
        )

    def model_ready(self, version: int) -> bool:
        if self.model is None:
            return False
        status = self.model.get("status") or {}
        return (
            status.get("phase") == "Ready"
            and status.get("servingVersion") == version
            and status.get("observedGeneration") == self.model["metadata"]["generation"]
        )

    def generation(self) -> int | None:
        return None if self.model is None else int(self.model["metadata"]["generation"])


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


@dataclass
class Recorder:
    """Samples the GitRepository, the Kustomization and the RerankModel every ``period`` seconds."""

    kube: KubeRest
    namespace: str
    period: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Recorder:
        threading.Thread(target=self._run, name="gitops-recorder", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.kube.get(path)
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise
        return result

    def _run(self) -> None:
        ns = self.namespace
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                # Kustomization first: when it reads Ready, the model it waited for must read Ready after it.
                source = self._get(f"{SOURCE_API}/namespaces/{ns}/gitrepositories/{FLUX_NAME}") or {}
                kustomization = self._get(f"{KUSTOMIZE_API}/namespaces/{ns}/kustomizations/{FLUX_NAME}") or {}
                model = self._get(f"{RERANK_API}/namespaces/{ns}/rerankmodels/{MODEL}")
                artifact = (source.get("status") or {}).get("artifact") or {}
                self.samples.append(
                    Sample(time.monotonic(), artifact.get("revision", ""), kustomization, model)
                )
            self._stop.wait(self.period)

    def latest(self) -> Sample:
        return self.samples[-1]

    def wait(
        self, what: str, check: Callable[[Sample], bool], timeout: float, start: float | None = None
    ) -> Sample:
        """The first sample taken at or after ``start`` (default: now) that passes ``check``."""
        begin = time.monotonic() if start is None else start
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            samples = self.samples
            for sample in samples[index:]:
                if sample.at >= begin and check(sample):
                    return sample
            index = len(samples)
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        latest = self.latest()
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; Kustomization status "
            f"{json.dumps(latest.kustomization.get('status'), indent=1)}\nRerankModel status "
            f"{json.dumps((latest.model or {}).get('status'), indent=1)}"
        )

    def since(self, start: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= start]


@dataclass
class Timeline:
    """Seconds from a push to what followed it, printed as one line."""

    label: str
    pushed: float
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str, at: float) -> None:
        self.marks.append((what, at - self.pushed))

    def line(self) -> str:
        steps = ", ".join(f"{what} {seconds:.1f}" for what, seconds in self.marks)
        return f"[timeline] {self.label}: commit 0.0, {steps} (s)"


@dataclass
class Load:
    """A cohere client calling the ready runtime pods round-robin until stopped; counts failures."""

    kube: KubeRest
    namespace: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _ready_pod_ips(self) -> list[str]:
        pods = self.kube.get(
            f"/api/v1/namespaces/{self.namespace}/pods", labelSelector="app.kubernetes.io/component=runtime"
        )["items"]
        return sorted(
            pod["status"]["podIP"]
            for pod in pods
            if not pod["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions") or []
            )
        )

    def _run(self) -> None:
        seen_versions: list[str] = []

        def remember(response: httpx.Response) -> None:
            if version := response.headers.get("x-model-version"):
                seen_versions.append(version)

        with httpx.Client(event_hooks={"response": [remember]}, timeout=30) as http:
            index = 0
            while not self._stop.is_set():
                # Like a Service's endpoints: only ready pods get requests.
                ips = self._ready_pod_ips()
                if not ips:
                    self.failures.append("no ready runtime pod")
                    self._stop.wait(0.2)
                    continue
                ip = ips[index % len(ips)]
                index += 1
                client = cohere.ClientV2(api_key="unused", base_url=f"http://{ip}:8000", httpx_client=http)
                try:
                    response = client.rerank(
                        model=MODEL,
                        query="What is the capital of France?",
                        documents=DOCUMENTS,
                        top_n=2,
                        request_options={"max_retries": 0},
                    )
                    assert response.results[0].index in (0, 2), response.results
                    self.ok += 1
                except Exception as error:
                    self.failures.append(f"{ip}: {error!r}"[:300])
                self._stop.wait(0.05)
        self.versions = list(dict.fromkeys(seen_versions))

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="gitops-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


# -- the scenarios


@dataclass
class GitOps:
    """The pieces the scenarios work with."""

    cluster: Cluster
    flux: FluxControllers
    repo: GitWorkTree
    recorder: Recorder
    generation_at_push: int | None = None

    @property
    def ns(self) -> str:
        return self.cluster.namespace

    def _generation(self) -> int | None:
        try:
            return int(self.cluster.get("rerankmodels", MODEL)["metadata"]["generation"])
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    def commit_model(self, message: str, *, source: str = HUB_REPO, **export: Any) -> tuple[str, float]:
        """Commit the RerankModel with these export settings and push; returns (sha, push time)."""
        self.repo.write("models/rerankmodel.yaml", rerankmodel_manifest(source, **export))
        self.generation_at_push = self._generation()
        return self.repo.commit(message), time.monotonic()

    def revert(self, sha: str) -> tuple[str, float]:
        """``git revert`` a commit and push; returns (sha, push time)."""
        self.generation_at_push = self._generation()
        return self.repo.revert(sha), time.monotonic()

    def print_jobs(self) -> None:
        """Every export/promote Job with its run time (API timestamps, whole seconds)."""
        for component in ("export", "promote"):
            for job in self.cluster.jobs(component):
                status = job.get("status") or {}
                took = "running"
                if status.get("startTime") and status.get("completionTime"):
                    start = dt.datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
                    end = dt.datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
                    took = f"{(end - start).total_seconds():.0f} s"
                print(f"[jobs] {component} {job['metadata']['name']}: {took}")

    def export_jobs(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.cluster.jobs("export")]

    def promote_jobs(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.cluster.jobs("promote")]

    def follow(self, label: str, sha: str, pushed: float, version: int, timeout: float = 300) -> Timeline:
        """Wait for the commit to be fetched, applied, served and reported Ready; returns the timeline."""
        timeline = Timeline(label, pushed)
        before = self.generation_at_push
        wait = self.recorder.wait
        fetched = wait(f"source revision {sha[:8]}", lambda s: s.source_revision.endswith(sha), 60, pushed)
        timeline.mark("fetched", fetched.at)
        applied = wait("the commit applied", lambda s: s.generation() not in (None, before), 60, pushed)
        timeline.mark("applied", applied.at)
        model_ready = wait(
            f"RerankModel Ready serving {version}", lambda s: s.model_ready(version), timeout, pushed
        )
        timeline.mark(f"RerankModel Ready v{version}", model_ready.at)
        engine_ready = wait(
            f"Kustomization Ready at {sha[:8]}", lambda s: s.kustomization_ready(sha), timeout, pushed
        )
        timeline.mark("Kustomization Ready", engine_ready.at)
        # The engine's verdict follows the model's real state: whenever it read Ready for this commit, the
        # RerankModel (read right after it) served the committed spec.
        for sample in self.recorder.since(pushed):
            if sample.kustomization_ready(sha):
                model_status = (sample.model or {}).get("status")
                assert sample.model_ready(version), (
                    f"Kustomization Ready at {sha[:8]} with model {model_status}"
                )
        print(timeline.line())
        return timeline

    def kustomization_failed(self, sha: str, reason: str, pushed: float, timeout: float) -> Sample:
        """The first sample where the engine reports the commit not Ready for ``reason``."""

        def check(sample: Sample) -> bool:
            status = sample.kustomization.get("status") or {}
            ready = _condition(status, "Ready") or {}
            attempted = str(status.get("lastAttemptedRevision", ""))
            return (
                attempted.endswith(sha) and ready.get("status") == "False" and ready.get("reason") == reason
            )

        return self.recorder.wait(f"Kustomization {reason} at {sha[:8]}", check, timeout, pushed)

    def assert_in_sync(self, step: str) -> None:
        """Scenario 6: a forced reconcile changes nothing, and only the engine owns the spec."""
        stamp = str(time.time_ns())
        self.cluster.kube.request(
            "PATCH",
            f"{KUSTOMIZE_API}/namespaces/{self.ns}/kustomizations/{FLUX_NAME}",
            {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": stamp}}},
            content_type="application/merge-patch+json",
        )

        def handled(sample: Sample) -> bool:
            return (sample.kustomization.get("status") or {}).get("lastHandledReconcileAt") == stamp

        self.recorder.wait(f"reconcile request {stamp} handled", handled, 120)
        revision, output = self.flux.apply_outputs(self.ns, FLUX_NAME)[-1]
        actions = {key: value for key, value in output.items() if key.startswith("RerankModel/")}
        assert actions == {f"RerankModel/{self.ns}/{MODEL}": "unchanged"}, (step, revision, output)
        fields = self.cluster.get("rerankmodels", MODEL)["metadata"]["managedFields"]
        spec_owners = sorted(
            {(f["manager"], f["operation"]) for f in fields if "f:spec" in (f.get("fieldsV1") or {})}
        )
        assert spec_owners == [("kustomize-controller", "Apply")], (step, spec_owners)
        managers = sorted({f"{f['manager']}/{f['operation']}/{f.get('subresource', '-')}" for f in fields})
        print(f"[in sync] {step}: forced reconcile left the RerankModel unchanged; field managers {managers}")


@pytest.fixture
def gitops_cluster(
    control_plane: ControlPlane,
    kube_rest: KubeRest,
    namespace: str,
    rerankmodel_crd: str,
    process_kubelet: ProcessKubelet,
    fake_hub: FakeHub,
    run_operator: RunOperator,
    tmp_path: Path,
) -> Iterator[Cluster]:
    """The lifecycle tier's cluster: the CRD, pods that reach the fake hub, the operator as the chart's
    ServiceAccount."""
    with operator_cluster(
        control_plane, kube_rest, namespace, process_kubelet, fake_hub, run_operator, tmp_path
    ) as cluster:
        yield cluster


@pytest.fixture
def gitops(
    gitops_cluster: Cluster, flux: FluxControllers, git_server: GitServer, tmp_path: Path
) -> Iterator[GitOps]:
    """Operator, engine and a repository; a GitRepository and a Kustomization (wait: true) point at it."""
    cluster = gitops_cluster
    cluster.start_operator()
    repo = GitWorkTree.create(git_server, "models", tmp_path / "work")
    kustomize = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    repo.write("models/kustomization.yaml", yaml.safe_dump({**kustomize, "resources": ["rerankmodel.yaml"]}))
    ns, kube = cluster.namespace, cluster.kube
    kube.request(
        "POST",
        f"{SOURCE_API}/namespaces/{ns}/gitrepositories",
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": FLUX_NAME},
            "spec": {"url": git_server.url("models.git"), "ref": {"branch": "main"}, "interval": "2s"},
        },
    )
    kube.request(
        "POST",
        f"{KUSTOMIZE_API}/namespaces/{ns}/kustomizations",
        {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": FLUX_NAME},
            "spec": {
                "sourceRef": {"kind": "GitRepository", "name": FLUX_NAME},
                "path": "./models",
                "targetNamespace": ns,
                "prune": True,
                "wait": True,  # health assessment of every applied object with kstatus
                "interval": "1m",
                "retryInterval": "3s",
                "timeout": "5m",
            },
        },
    )
    recorder = Recorder(kube, ns).start()
    try:
        yield GitOps(cluster, flux, repo, recorder)
    finally:
        recorder.stop()
        for name in ("source-controller", "kustomize-controller"):
            print(f"--- {name} (last lines)\n{flux.tail(name, 10)}")


# Two exports and five rollouts in one walk: 11 min on 2 busy cores, above the suite's 900 s default.
@pytest.mark.timeout(1800)
def test_gitops_rollouts(gitops: GitOps) -> None:
    cluster = gitops.cluster

    # -- 1: the first commit: applied, exported, served; the engine reports Ready only then
    sha1, pushed = gitops.commit_model("Serve MiniLM (fp32)", weightFormat="fp32")
    gitops.follow("1 first commit", sha1, pushed, version=1)
    assert len(gitops.export_jobs()) == 1 and job_complete(cluster.jobs("export")[0])
    waiting = [
        s for s in gitops.recorder.since(pushed) if s.model is not None and not s.kustomization_ready(sha1)
    ]
    assert waiting, "the Kustomization never waited for the RerankModel"
    gitops.assert_in_sync("after 1")

    # -- 2: an export-relevant change: version 2 exported and served while a client keeps calling
    load = Load(cluster.kube, gitops.ns).start()
    try:
        sha2, pushed = gitops.commit_model("Serve MiniLM with int8 weights", weightFormat="int8")
        gitops.follow("2 weightFormat int8", sha2, pushed, version=2)
        time.sleep(1)
    finally:
        load.stop()
    print(
        f"[2] client: {load.ok} requests ok, {len(load.failures)} failed, versions answered {load.versions}"
    )
    assert load.failures == [], load.failures[:5]
    assert load.ok > 10 and load.versions[-1] == "2", (load.ok, load.versions)
    assert len(gitops.export_jobs()) == 2
    gitops.assert_in_sync("after 2")

    # -- 3: git revert: version 1 again through a promote, without a new export
    promotes = len(gitops.promote_jobs())
    sha3, pushed = gitops.revert(sha2)
    gitops.follow("3 git revert", sha3, pushed, version=1)
    assert len(gitops.export_jobs()) == 2, gitops.export_jobs()
    assert len(gitops.promote_jobs()) == promotes + 1, gitops.promote_jobs()
    gitops.print_jobs()
    gitops.assert_in_sync("after 3")

    # -- 4: an invalid spec: the engine reports the API server's admission error; version 1 keeps serving
    generation = cluster.get("rerankmodels", MODEL)["metadata"]["generation"]
    sha4, pushed = gitops.commit_model("Try 3-bit weights", weightFormat="int3")
    rejected = gitops.kustomization_failed(sha4, "ReconciliationFailed", pushed, 120)
    message = (_condition(rejected.kustomization["status"], "Ready") or {})["message"]
    print(f"[timeline] 4 invalid spec: commit 0.0, rejected {rejected.at - pushed:.1f} (s): {message}")
    assert "spec.export.weightFormat" in message and '"int3"' in message, message
    assert rejected.kustomization["status"]["lastAppliedRevision"].endswith(sha3)
    assert cluster.get("rerankmodels", MODEL)["metadata"]["generation"] == generation
    assert (cluster.status(MODEL)["phase"], cluster.status(MODEL)["servingVersion"]) == ("Ready", 1)
    sha4_fix, pushed = gitops.revert(sha4)
    fixed = gitops.recorder.wait(
        "Kustomization Ready again", lambda s: s.kustomization_ready(sha4_fix), 120, pushed
    )
    print(f"[timeline] 4 revert: commit 0.0, Kustomization Ready {fixed.at - pushed:.1f} (s)")
    gitops.assert_in_sync("after 4")

    # -- 5: the export of the committed spec fails: Degraded, the engine not Ready, version 1 keeps serving
    exports = len(gitops.export_jobs())
    sha5, pushed = gitops.commit_model("Serve a model that does not exist", source="test-org/missing")

    def degraded(sample: Sample) -> bool:
        status = (sample.model or {}).get("status") or {}
        generation = (sample.model or {}).get("metadata", {}).get("generation")
        return status.get("phase") == "Degraded" and status.get("observedGeneration") == generation

    marked = gitops.recorder.wait("RerankModel Degraded", degraded, 240, pushed)
    status = (marked.model or {})["status"]
    failure = status["lastFailure"]["message"]
    print(f"[timeline] 5 failing export: commit 0.0, Degraded {marked.at - pushed:.1f} (s): {failure}")
    assert status["servingVersion"] == 1 and failure.startswith("error:"), status
    stalled = _condition(status, "Stalled")
    if stalled is not None:
        # kstatus: Stalled=True is Failed; kustomize-controller fails the health check at once (fail-fast).
        assert stalled["status"] == "True", status["conditions"]
        failed = gitops.kustomization_failed(sha5, "HealthCheckFailed", pushed, 60)
        message = (_condition(failed.kustomization["status"], "Ready") or {})["message"]
        print(f"[timeline] 5 failing export: HealthCheckFailed {failed.at - pushed:.1f} (s): {message}")
    else:
        # Without kstatus conditions Ready=False reads InProgress: the engine waits until its timeout.
        time.sleep(5)
    assert not any(s.kustomization_ready(sha5) for s in gitops.recorder.since(pushed))
    assert (cluster.status(MODEL)["phase"], cluster.status(MODEL)["servingVersion"]) == ("Degraded", 1)
    assert len(gitops.export_jobs()) == exports + 1
    sha6, pushed = gitops.revert(sha5)
    gitops.follow("5 revert of the failing commit", sha6, pushed, version=1)
    assert len(gitops.export_jobs()) == exports + 1
    gitops.assert_in_sync("after 5")
    assert gitops.flux.alive()
