"""A real, local Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager.

It follows envtest's recipe: everything listens on loopback, the API server serves TLS with a certificate
signed by a throw-away CA, authorizes with RBAC and signs service-account tokens; the admin identity is a
client certificate in the ``system:masters`` group. There is no kubelet and no scheduler —
``tests.support.kubelet`` stands in for both when a test needs running pods.

Every process runs in its own process group and is always torn down: by ``ControlPlane.stop()`` (fixture
finalizer), an ``atexit`` hook, SIGTERM/SIGHUP handlers, and — when the test process is killed outright — by
the kernel, since in-process control planes ask for ``PR_SET_PDEATHSIG``.

Command line (used by ``make cluster-up`` / ``make cluster-down``)::

    python -m tests.support.controlplane up      # starts detached; last stdout line is KUBECONFIG=<path>
    python -m tests.support.controlplane up --node   # plus a real node (tests.support.node); needs root
    python -m tests.support.controlplane down    # stops every process it started, cleans up a (crashed) node
    python -m tests.support.controlplane status

The state directory is ``$RERANK_CLUSTER_DIR`` or ``<repo>/.cluster``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "control-plane.sh"
STATE_FILE_NAME = "controlplane.json"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")

# Controllers the operator's tests rely on. pvc-protection must run because the StorageObjectInUseProtection
# admission plugin puts a finalizer on every PVC; without it PVCs (and their namespaces) never go away.
CONTROLLERS = (
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
)

# With a real node (``node_ip`` set) Services need endpoints, PVCs binding and the node its taints lifted.
NODE_CONTROLLERS = (
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "persistentvolume-binder-controller",
    "pod-garbage-collector-controller",
    # Removes the node.kubernetes.io/not-ready taint the kubelet registers with once the node is Ready.
    "node-lifecycle-controller",
)

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# Audit only what ServiceAccounts do (the operator under test runs as one; controllers and tests use the admin
# certificate), at Metadata level: verb, resource, subresource, namespace and response code of every request.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def binaries_dir() -> Path:
    """Return the cache directory that holds (or will hold) the pinned control-plane binaries."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "bindir"], check=True, capture_output=True, text=True, cwd=REPO_ROOT
    )
    return Path(result.stdout.strip().splitlines()[-1])


def missing_binaries(bin_dir: Path) -> list[str]:
    """Names of the control-plane binaries not yet present in ``bin_dir``."""
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def ensure_binaries() -> Path:
    """Return the binaries directory, building the pinned binaries first when any is missing.

    The build prints its own progress messages on stderr; the first one takes many minutes.
    """
    bin_dir = binaries_dir()
    if not missing_binaries(bin_dir):
        return bin_dir
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "build"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"building the control-plane binaries failed (exit {result.returncode})")
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    if missing := missing_binaries(bin_dir):
        raise ControlPlaneError(f"control-plane build finished but {', '.join(missing)} missing in {bin_dir}")
    return bin_dir


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _ec_key(path: Path) -> None:
    # P-256 keys: generated instantly, and accepted by Kubernetes for serving, client and token-signing certs.
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))


@dataclass(frozen=True)
class Certificates:
    """Paths of the PKI files of one control plane."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path

    @classmethod
    def create(cls, pki_dir: Path, extra_ips: Sequence[str] = ()) -> Certificates:
        """Generate a test CA, an API-server serving cert, an admin client cert and service-account keys.

        ``extra_ips`` are added to the serving certificate's subject alternative names."""
        pki_dir.mkdir(parents=True, exist_ok=True)
        certs = cls(
            ca_cert=pki_dir / "ca.crt",
            ca_key=pki_dir / "ca.key",
            serving_cert=pki_dir / "apiserver.crt",
            serving_key=pki_dir / "apiserver.key",
            admin_cert=pki_dir / "admin.crt",
            admin_key=pki_dir / "admin.key",
            sa_key=pki_dir / "sa.key",
            sa_pub=pki_dir / "sa.pub",
        )
        _ec_key(certs.ca_key)
        _openssl(
            "req", "-x509", "-new", "-key", str(certs.ca_key), "-out", str(certs.ca_cert), "-days", "365",
            "-subj", "/CN=rerank-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
        certs._sign(
            certs.serving_key,
            certs.serving_cert,
            "/CN=kube-apiserver",
            [
                "subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                "DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
                + "".join(f",IP:{ip}" for ip in extra_ips),
                "extendedKeyUsage=serverAuth",
                "keyUsage=critical,digitalSignature,keyEncipherment",
            ],
        )
        certs._sign(
            certs.admin_key,
            certs.admin_cert,
            "/O=system:masters/CN=rerank-test-admin",
            ["extendedKeyUsage=clientAuth", "keyUsage=critical,digitalSignature,keyEncipherment"],
        )
        _ec_key(certs.sa_key)
        _openssl("ec", "-in", str(certs.sa_key), "-pubout", "-out", str(certs.sa_pub))
        for key in (certs.ca_key, certs.serving_key, certs.admin_key, certs.sa_key):
            key.chmod(0o600)
        return certs

    def _sign(self, key: Path, cert: Path, subject: str, extensions: Sequence[str]) -> None:
        _ec_key(key)
        csr = cert.with_suffix(".csr")
        ext_file = cert.with_suffix(".ext")
        ext_file.write_text("".join(f"{line}\n" for line in extensions))
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject)
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "365", "-extfile", str(ext_file),
        )  # fmt: skip
        csr.unlink()
        ext_file.unlink()


def write_kubeconfig(path: Path, server: str, certs: Certificates, user: str = "admin") -> None:
    """Write a kubeconfig with embedded-by-path client certificate credentials for ``server``."""
    # JSON is valid YAML, so no YAML library is needed to write a kubeconfig.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "rerank-test",
                "cluster": {"server": server, "certificate-authority": str(certs.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(certs.admin_cert), "client-key": str(certs.admin_key)},
            }
        ],
        "contexts": [{"name": "rerank-test", "context": {"cluster": "rerank-test", "user": user}}],
        "current-context": "rerank-test",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def _set_parent_death_signal() -> None:
    # Runs in the forked child before exec: the kernel sends SIGKILL when the thread that started us dies,
    # so a test run killed with SIGKILL still leaves no control-plane process behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class ManagedProcess:
    """One control-plane process, leader of its own process group."""

    name: str
    pid: int
    binary: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        """True while the process exists (and still runs our binary, so a recycled pid is never touched)."""
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        # A zombie (state Z) has exited already; only its parent can reap it.
        state = stat.rsplit(")", 1)[-1].split()[0]
        return cmdline.split(b"\0", 1)[0].decode() == self.binary and state != "Z"

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (the process and anything it spawned)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, wait up to ``timeout`` seconds, then SIGKILL it."""
        was_alive = self.alive()
        if was_alive:
            self.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        if was_alive or self.popen is not None:
            # Kill the group even when the leader is gone: a child it left behind would still be in it.
            self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        else:
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)

    def reaped(self) -> bool:
        """True once no trace of the process is left (not even a zombie waiting for its parent)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return True
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        return comm != Path(self.binary).name[:15]

    def tail(self, lines: int = 15) -> str:
        """Last lines of the process log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback, with their state in ``state_dir``.

    ``detached=True`` starts processes that outlive this Python process (``make cluster-up``); otherwise they
    die with it at the latest. ``node_ip`` (used with a real node, :mod:`tests.support.node`) makes the API
    server bind and advertise that address instead of loopback, so pods reach it through the ``kubernetes``
    Service, and starts the controllers a node needs (endpoints, PV binding, pod GC).
    """

    state_dir: Path
    bin_dir: Path
    detached: bool = False
    processes: list[ManagedProcess] = field(default_factory=list)
    server: str = ""
    etcd_url: str = ""
    started_in_seconds: float | None = None
    node_ip: str | None = None

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client certificate in ``system:masters``)."""
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        """JSON file that lets ``down`` (and test sessions) find a running control plane."""
        return self.state_dir / STATE_FILE_NAME

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines) of every request made by a ServiceAccount."""
        return self.state_dir / "logs" / "audit.log"

    @property
    def ca_cert(self) -> Path:
        """CA that signed the API server's serving certificate."""
        return self.state_dir / "pki" / "ca.crt"

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Start all processes and return once /readyz is ok and the controllers are working."""
        started = time.monotonic()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True)
        if not self.detached:
            _register_cleanup(self.stop)
        try:
            certs = Certificates.create(self.state_dir / "pki", [self.node_ip] if self.node_ip else [])
            self._start_etcd(logs)
            self._start_apiserver(logs, certs)
            write_kubeconfig(self.kubeconfig, self.server, certs)
            deadline = started + timeout
            self._wait(self._apiserver_ready, deadline, "kube-apiserver /readyz")
            self._start_controller_manager(logs, certs)
            self._wait(
                self._controllers_working, deadline, "kube-controller-manager (default ServiceAccount)"
            )
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.started_in_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop every process (reverse start order). Safe to call more than once."""
        for process in reversed(self.processes):
            # With a node, the API server's lease reconciler holds up its SIGTERM for ~10 s: its state is
            # thrown away anyway.
            quick = self.node_ip and process.name == "kube-apiserver"
            process.stop(timeout=2.0 if quick else 10.0)
        self.processes.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        _unregister_cleanup(self.stop)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes ------------------------------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str], logs: Path) -> ManagedProcess:
        binary = str(self.bin_dir / name)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,  # own process group, so the whole group can be signalled
                preexec_fn=None if self.detached else _set_parent_death_signal,
            )
        # Keep the Popen even when detached: /proc checks would race with the exec right after fork.
        process = ManagedProcess(name, popen.pid, binary, log_path, popen)
        self.processes.append(process)
        return process

    def _start_etcd(self, logs: Path) -> None:
        client_port, peer_port = free_loopback_port(), free_loopback_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # test data: durability is not worth the fsync latency
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ],
            logs,
        )

    def _start_apiserver(self, logs: Path, certs: Certificates) -> None:
        port = free_loopback_port()
        address = self.node_ip or "127.0.0.1"
        self.server = f"https://{address}:{port}"
        node_args = (
            [
                # The kubernetes Service gets the advertised address as its endpoint.
                "--endpoint-reconciler-type=lease",
                f"--kubelet-client-certificate={certs.admin_cert}",
                f"--kubelet-client-key={certs.admin_key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
            if self.node_ip
            else ["--endpoint-reconciler-type=none"]
        )
        audit_policy = self.state_dir / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                f"--tls-cert-file={certs.serving_cert}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--client-ca-file={certs.ca_cert}",
                f"--secure-port={port}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={certs.sa_pub}",
                f"--service-account-signing-key-file={certs.sa_key}",
                *node_args,
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",  # written before the response: a test reads it right after
                "--audit-log-maxsize=200",
                "--profiling=false",
                "--v=1",
            ],
            logs,
        )

    def _start_controller_manager(self, logs: Path, certs: Certificates) -> None:
        port = free_loopback_port()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS + (NODE_CONTROLLERS if self.node_ip else ()))}",
                f"--root-ca-file={certs.ca_cert}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.state_dir / 'controller-manager-certs'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--profiling=false",
                "--v=1",
            ],
            logs,
        )

    # -- readiness ------------------------------------------------------------------------------------------

    def _wait(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise ControlPlaneError(
                        f"{process.name} exited during start-up (log {process.log_path}):\n{process.tail()}"
                    )
            if check():
                return
            time.sleep(0.1)
        raise ControlPlaneError(f"timed out waiting for {what}; logs in {self.state_dir / 'logs'}")

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context that trusts the test CA and presents the admin client certificate."""
        pki = self.state_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` as admin; returns (status, body), status 0 when the server cannot be reached."""
        request = urllib.request.Request(self.server + path, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.ssl_context(), timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (OSError, ssl.SSLError):
            return 0, b""

    def _apiserver_ready(self) -> bool:
        status, body = self.get("/readyz")
        return status == 200 and body.strip() == b"ok"

    def _controllers_working(self) -> bool:
        # The serviceaccount controller creating "default" in "default" proves the controller manager is up,
        # has synced its informers and can write; the root CA publisher is needed for projected SA volumes.
        sa_status, _ = self.get("/api/v1/namespaces/default/serviceaccounts/default")
        ca_status, _ = self.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
        return sa_status == 200 and ca_status == 200

    def healthy(self) -> bool:
        """True when the API server answers /readyz with ok."""
        return self._apiserver_ready()

    # -- state ----------------------------------------------------------------------------------------------

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "etcd": self.etcd_url,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "node_ip": self.node_ip,
            "processes": [
                {"name": p.name, "pid": p.pid, "binary": p.binary, "log": str(p.log_path)}
                for p in self.processes
            ],
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def attach(cls, state_dir: Path) -> ControlPlane | None:
        """The control plane recorded in ``state_dir`` (started by another process), or None."""
        state_file = state_dir / STATE_FILE_NAME
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None
        plane = cls(state_dir=state_dir, bin_dir=Path(state["bin_dir"]), detached=True)
        plane.server = state["server"]
        plane.etcd_url = state["etcd"]
        plane.node_ip = state.get("node_ip")
        plane.processes = [
            ManagedProcess(p["name"], int(p["pid"]), p["binary"], Path(p["log"])) for p in state["processes"]
        ]
        return plane


# -- teardown on exit and on signals -----------------------------------------------------------------------

_cleanups: list[Callable[[], object]] = []
_cleanup_lock = threading.Lock()
_handlers_installed = False


def _run_cleanups() -> None:
    with _cleanup_lock:
        pending = list(reversed(_cleanups))
        _cleanups.clear()
    for cleanup in pending:
        with contextlib.suppress(Exception):
            cleanup()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _run_cleanups()
    # Die of the same signal, as the default disposition would have done.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _register_cleanup(cleanup: Callable[[], object]) -> None:
    """Run ``cleanup`` at interpreter exit and on SIGTERM/SIGHUP (SIGINT reaches fixture finalizers)."""
    global _handlers_installed
    with _cleanup_lock:
        _cleanups.append(cleanup)
        if _handlers_installed:
            return
        _handlers_installed = True
    atexit.register(_run_cleanups)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, _on_signal)


def _unregister_cleanup(cleanup: Callable[[], object]) -> None:
    with _cleanup_lock, contextlib.suppress(ValueError):
        _cleanups.remove(cleanup)


def register_cleanup(cleanup: Callable[[], object]) -> None:
    """Tear down other test machinery (kubelet, operator) on interpreter exit and on signals too."""
    _register_cleanup(cleanup)


def unregister_cleanup(cleanup: Callable[[], object]) -> None:
    """Forget a cleanup registered with :func:`register_cleanup` (after it ran normally)."""
    _unregister_cleanup(cleanup)


# -- command line ------------------------------------------------------------------------------------------


def default_state_dir() -> Path:
    """``$RERANK_CLUSTER_DIR`` or ``<repo>/.cluster`` (git-ignored)."""
    return Path(os.environ.get("RERANK_CLUSTER_DIR") or REPO_ROOT / ".cluster")


@contextlib.contextmanager
def _timed(label: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"controlplane: {label} in {time.monotonic() - started:.1f}s", file=sys.stderr)


def _cmd_up(state_dir: Path, node: bool = False) -> int:
    running = ControlPlane.attach(state_dir)
    if running is not None and running.healthy() and bool(running.node_ip) == node:
        if node:
            from tests.support.node import Node

            recorded = Node.attach()
            if recorded is None or not recorded.healthy():
                print(
                    "controlplane: error: the node is not running; run `make cluster-down` first",
                    file=sys.stderr,
                )
                return 1
        print(f"controlplane: already running at {running.server}", file=sys.stderr)
        print(f"KUBECONFIG={running.kubeconfig}")
        return 0
    if running is not None and running.healthy():
        print(
            f"controlplane: error: a control plane {'without' if node else 'with'} a node runs; "
            "run `make cluster-down` first",
            file=sys.stderr,
        )
        return 1
    if running is not None:
        _stop_recorded(running)
    if node:
        return _cmd_up_node(state_dir)
    bin_dir = ensure_binaries()
    plane = ControlPlane(state_dir=state_dir, bin_dir=bin_dir, detached=True)
    try:
        plane.start()
    except ControlPlaneError as error:
        print(f"controlplane: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    print(
        f"controlplane: up at {plane.server} in {plane.started_in_seconds:.1f}s "
        f"(logs {state_dir / 'logs'}; stop with: python -m tests.support.controlplane down)",
        file=sys.stderr,
    )
    print(f"KUBECONFIG={plane.kubeconfig}")
    return 0


def _cmd_up_node(state_dir: Path) -> int:
    from tests.support.node import NodeError, start_cluster_with_node

    started = time.monotonic()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    try:
        plane, node = start_cluster_with_node(state_dir)
    except (ControlPlaneError, NodeError) as error:
        print(f"controlplane: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    print(
        f"controlplane: up at {plane.server} with node in {time.monotonic() - started:.1f}s "
        f"(control plane {plane.started_in_seconds:.1f}s, node {node.started_in_seconds:.1f}s; "
        f"logs {state_dir / 'logs'} and {node.node_dir / 'logs'}; stop with: make cluster-down)",
        file=sys.stderr,
    )
    print(f"KUBECONFIG={plane.kubeconfig}")
    return 0


def _teardown_node() -> int:
    from tests.support.node import Node

    node = Node.attach()
    if node is None:
        return 0
    owner = node.state.get("owner_pid")
    if owner is not None and not node.orphaned():
        # Started by a test session that is still running: it tears the node down itself.
        print(f"controlplane: node left alone: test process {owner} owns it", file=sys.stderr)
        return 0
    problems = node.teardown()
    for problem in problems:
        print(f"controlplane: error: node teardown: {problem}", file=sys.stderr)
    if not problems:
        print("controlplane: node removed", file=sys.stderr)
    return 1 if problems else 0


def _stop_recorded(plane: ControlPlane) -> None:
    for process in reversed(plane.processes):
        process.stop()
    plane.processes.clear()
    with contextlib.suppress(FileNotFoundError):
        plane.state_file.unlink()


def _cmd_down(state_dir: Path, node: bool = False) -> int:
    node_status = _teardown_node()
    plane = ControlPlane.attach(state_dir)
    if plane is None:
        print(f"controlplane: nothing running (no {state_dir / STATE_FILE_NAME})", file=sys.stderr)
        return node_status
    processes = list(plane.processes)
    _stop_recorded(plane)
    # Detached processes were adopted by init, which reaps them on its own schedule: wait for that, so that
    # "down" returning means no process (not even a zombie) is left.
    deadline = time.monotonic() + 10
    while not all(p.reaped() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = [p.name for p in processes if p.alive()]
    if leftovers:
        print(f"controlplane: error: still running: {', '.join(leftovers)}", file=sys.stderr)
        return 1
    shutil.rmtree(state_dir, ignore_errors=True)
    print("controlplane: stopped", file=sys.stderr)
    return node_status


def _cmd_status(state_dir: Path, node: bool = False) -> int:
    plane = ControlPlane.attach(state_dir)
    if plane is None:
        print("controlplane: not running", file=sys.stderr)
        return 1
    healthy = plane.healthy()
    for process in plane.processes:
        print(f"{process.name}: pid {process.pid} {'running' if process.alive() else 'gone'}")
    if plane.node_ip:
        from tests.support.node import Node

        recorded = Node.attach()
        for process in recorded.processes if recorded else []:
            print(f"{process.name}: pid {process.pid} {'running' if process.alive() else 'gone'}")
        healthy = healthy and recorded is not None and recorded.healthy()
    print(f"apiserver {plane.server}: {'ready' if healthy else 'not ready'}")
    print(f"KUBECONFIG={plane.kubeconfig}")
    return 0 if healthy else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tests.support.controlplane``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.controlplane", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="default: $RERANK_CLUSTER_DIR or .cluster/"
    )
    parser.add_argument("--node", action="store_true", help="up: also start a real node (root only)")
    args = parser.parse_args(argv)
    state_dir: Path = (args.state_dir or default_state_dir()).resolve()
    commands: dict[str, Callable[[Path, bool], int]] = {
        "up": _cmd_up,
        "down": _cmd_down,
        "status": _cmd_status,
    }
    try:
        return commands[args.command](state_dir, args.node)
    except ControlPlaneError as error:
        print(f"controlplane: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
