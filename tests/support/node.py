"""A real Kubernetes node on this host: containerd + runc + CNI bridge + kubelet + kube-proxy, plus the
kube-scheduler and CoreDNS (cluster DNS), next to the control plane of :mod:`tests.support.controlplane`.

Only one such node can exist per machine (it owns fixed interface names and the kubelet's fixed host paths).
Everything it creates or changes on the host is recorded in a state file *before* it is created, so that
``python -m tests.support.controlplane down`` (``make cluster-down``) also cleans up after a crashed run:

* processes (by PID, checked against their binary): containerd, kubelet, kube-proxy, kube-scheduler, CoreDNS,
  and — found through their cgroups and their containerd socket — every container process and shim;
* two bridges: ``rrnode0`` holding only the node IP (10.250.0.1/32; the kubelet refuses loopback and this
  kernel cannot create dummy interfaces) and ``rrcni0``, the pod network (10.244.0.0/24), with their veths;
* every mount under the node directory (overlay rootfs, pod volumes, network namespaces);
* iptables/ip6tables chains named ``KUBE-*`` and the rules that jump to them;
* the kubelet's ``kubepods`` cgroups;
* sysctls the kubelet, kube-proxy and the bridge change (restored to the recorded values);
* host paths the kubelet or containerd create outside their private directories (``/var/lib/kubelet``, …),
  removed only when they did not exist before.

The API server binds and advertises the node IP (not loopback), so pods reach it through the ``kubernetes``
Service; host processes use the same address.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.controlplane import REPO_ROOT, ControlPlane, ControlPlaneError, ManagedProcess

NODE_BUILD_SCRIPT = REPO_ROOT / "hack" / "node.sh"
NODE_BINARIES = (
    "kubelet",
    "kube-proxy",
    "kube-scheduler",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "coredns",
)
NODE_NAME = "rerank-node"
NODE_IP = "10.250.0.1"
NODE_BRIDGE = "rrnode0"
POD_BRIDGE = "rrcni0"
POD_SUBNET = "10.244.0.0/24"
CNI_NETWORK = "rerank-node"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CLUSTER_DOMAIN = "cluster.local"
DEFAULT_NODE_DIR = Path("/var/lib/rerank-node")
STATE_FILE_NAME = "node.json"
# Fixed ports of a node: kubelet API and healthz; DNS on the node IP.
FIXED_TCP_PORTS = (10250, 10248)
SYSCTLS = (
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Paths the kubelet and containerd hard-code outside the directories we give them, used by nothing else here:
# removed on teardown when they did not exist before.
HOST_PATHS = ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/run/containerd")
# Shared with other CNI users (podman): only our network's entries go, then the directories if empty.
SHARED_CNI_PATHS = ("/var/lib/cni", "/run/netns")
# Only the kubelet changes these; the forwarding/bridge sysctls are also set by podman, so a difference there
# after teardown may be someone else's.
OWN_SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory")
# Only kube-proxy's and the kubelet's chains: the pod network is configured without ipMasq/portmap so the CNI
# plugins add no chains (CNI-* chains on this host may belong to podman).
CHAIN_PREFIXES = ("KUBE-",)


IMAGE_ID_LABEL = "dev.rerank.image-id"


def archive_image(archive: Path) -> tuple[str, list[str]]:
    """(image ID, references) of a docker-archive (``podman save``) or single-image OCI archive."""
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        if "manifest.json" in names:
            member = tar.extractfile("manifest.json")
            entry = json.load(member)[0] if member else {}
            config = str(entry.get("Config", ""))
            refs = [_normalize_ref(ref) for ref in entry.get("RepoTags") or []]
            return Path(config).name.removesuffix(".json"), refs
        member = tar.extractfile("index.json")
        descriptor = json.load(member)["manifests"][0] if member else {}
        ref = (descriptor.get("annotations") or {}).get("io.containerd.image.name", "")
        blob = tar.extractfile(f"blobs/sha256/{descriptor['digest'].split(':', 1)[1]}")
        manifest = json.load(blob) if blob else {}
        return manifest.get("config", {}).get("digest", "").split(":")[-1], [ref] if ref else []


def _normalize_ref(ref: str) -> str:
    """containerd's name for a reference: docker.io/library/ for short names, as ctr import stores them."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


class NodeError(RuntimeError):
    """The node could not be built, prepared, started or cleaned up; the first line says why."""


def node_binaries_dir() -> Path:
    """Cache directory that holds (or will hold) the node binaries and the pause image archive."""
    result = subprocess.run(
        ["bash", str(NODE_BUILD_SCRIPT), "bindir"], check=True, capture_output=True, text=True, cwd=REPO_ROOT
    )
    return Path(result.stdout.strip().splitlines()[-1])


def pause_image() -> str:
    """Reference of the locally built sandbox image."""
    result = subprocess.run(
        ["bash", str(NODE_BUILD_SCRIPT), "pause-image"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    return result.stdout.strip()


def missing_node_binaries(bin_dir: Path) -> list[str]:
    """Node binaries (and the pause archive) not yet in ``bin_dir``."""
    missing = [name for name in NODE_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    missing += [name for name in ("pause.oci.tar", "node-probe.oci.tar") if not (bin_dir / name).is_file()]
    return missing


def ensure_node_binaries() -> Path:
    """Build what is missing (hack/node.sh build: Go builds and Debian packages); return the bin directory."""
    result = subprocess.run(
        ["bash", str(NODE_BUILD_SCRIPT), "build"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise NodeError(f"building the node binaries failed (exit {result.returncode})")
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    if missing := missing_node_binaries(bin_dir):
        raise NodeError(f"node build finished but {', '.join(missing)} missing in {bin_dir}")
    return bin_dir


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
    return result


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        _sysctl_path(name).write_text(value)


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _port_in_use(port: int, host: str = "0.0.0.0", kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def preflight(bin_dir: Path) -> None:
    """Raise :class:`NodeError` with a one-line reason when this host cannot run the node."""
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (kubelet, containerd, iptables and bridges); run as root")
    cap_eff = int(
        next(
            line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff")
        ).split()[1],
        16,
    )
    for bit, name in ((21, "CAP_SYS_ADMIN"), (12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW")):
        if not cap_eff & (1 << bit):
            raise NodeError(f"missing capability {name}: the node needs it for mounts, bridges and iptables")
    cgroup_root = Path("/sys/fs/cgroup")
    if not (cgroup_root / "cgroup.controllers").exists() and not (cgroup_root / "memory").is_dir():
        raise NodeError(
            "no usable cgroup layout: neither cgroup v2 nor a v1 memory hierarchy under /sys/fs/cgroup"
        )
    for tool in ("runc", "iptables", "ip6tables", "ip", "mount", "umount"):
        if shutil.which(tool) is None:
            raise NodeError(f"{tool} not found on PATH: run `bash hack/node.sh deps` (Debian packages)")
    if not any(Path(d, "bridge").exists() and Path(d, "host-local").exists() for d in CNI_BIN_DIRS):
        raise NodeError("CNI bridge/host-local plugins not found: run `bash hack/node.sh deps`")
    if missing := missing_node_binaries(bin_dir):
        raise NodeError(
            f"node binaries missing in {bin_dir}: {', '.join(missing)} (run `bash hack/node.sh build`)"
        )
    for port in FIXED_TCP_PORTS:
        if _port_in_use(port):
            raise NodeError(
                f"port {port} is in use: another kubelet runs on this host (one node per machine)"
            )
    for name in (NODE_BRIDGE, POD_BRIDGE):
        if _link_exists(name):
            raise NodeError(f"interface {name} exists: a node runs already, or run `make cluster-down` first")


def _cni_bin_dir() -> str:
    return next(d for d in CNI_BIN_DIRS if Path(d, "bridge").exists())


@dataclass
class Node:
    """The node's processes and host changes; ``state`` mirrors the JSON state file at every step."""

    node_dir: Path
    bin_dir: Path
    detached: bool = True
    state: dict[str, Any] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)
    started_in_seconds: float | None = None

    @property
    def state_file(self) -> Path:
        return self.node_dir / STATE_FILE_NAME

    @property
    def containerd_socket(self) -> Path:
        return self.node_dir / "containerd" / "containerd.sock"

    # -- state ----------------------------------------------------------------------------------------------

    def _save(self) -> None:
        self.state["processes"] = [
            {"name": p.name, "pid": p.pid, "binary": p.binary, "log": str(p.log_path)} for p in self.processes
        ]
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def attach(cls, node_dir: Path = DEFAULT_NODE_DIR) -> Node | None:
        """The node recorded in ``node_dir`` (running or crashed), or None."""
        try:
            state = json.loads((node_dir / STATE_FILE_NAME).read_text())
        except (OSError, ValueError):
            return None
        node = cls(node_dir=node_dir, bin_dir=Path(state.get("bin_dir", "")), state=state)
        node.processes = [
            ManagedProcess(p["name"], int(p["pid"]), p["binary"], Path(p["log"]))
            for p in state.get("processes", [])
        ]
        return node

    # -- host preparation (before the control plane starts: it binds the node IP) ----------------------------

    def prepare_host(self) -> None:
        """Record what is about to change, then create the node IP bridge and set the sysctls we rely on."""
        preflight(self.bin_dir)
        if self.node_dir.exists():
            raise NodeError(f"{self.node_dir} exists: run `make cluster-down` to clean up the previous node")
        self.node_dir.mkdir(parents=True)
        self.state = {
            "bin_dir": str(self.bin_dir),
            "sysctls": {name: _read_sysctl(name) for name in SYSCTLS if _read_sysctl(name) is not None},
            "host_paths_created": [p for p in HOST_PATHS if not os.path.lexists(p)],
            "shared_paths_created": [p for p in SHARED_CNI_PATHS if not os.path.lexists(p)],
            "links": [NODE_BRIDGE, POD_BRIDGE],
            # A node started by a test session belongs to that process: when it is gone, the node is debris.
            "owner_pid": None if self.detached else os.getpid(),
        }
        self._save()
        _run("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
        _run("ip", "link", "set", NODE_BRIDGE, "up")
        # Pod -> Service -> pod on the same bridge is routed through the host.
        _write_sysctl("net.ipv4.ip_forward", "1")

    # -- start ----------------------------------------------------------------------------------------------

    def start(self, plane: ControlPlane, timeout: float = 180.0) -> None:
        """Start containerd, import the pause image, start the scheduler, kube-proxy, CoreDNS and the kubelet,
        and return once the node is Ready with a fresh heartbeat."""
        started = time.monotonic()
        self.state["cluster_dir"] = str(plane.state_dir)
        self._save()
        for sub in (
            "containerd",
            "kubelet",
            "pod-logs",
            "cni/net.d",
            "cni/ipam",
            "cni/cache",
            "logs",
            "config",
        ):
            (self.node_dir / sub).mkdir(parents=True, exist_ok=True)
        deadline = started + timeout
        self._start_containerd()
        self._wait(self._containerd_ready, deadline, "containerd socket")
        self.import_image(self.bin_dir / "pause.oci.tar")
        self._start_scheduler(plane)
        self._start_kube_proxy(plane)
        self._start_coredns(plane)
        self._start_kubelet(plane)
        self._wait(lambda: self._node_ready(plane), deadline, f"node {NODE_NAME} Ready")
        self.started_in_seconds = time.monotonic() - started

    def _containerd_ready(self) -> bool:
        return self.containerd_socket.exists() and self._ctr("version", check=False).returncode == 0

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        binary = str(self.bin_dir / name)
        log_path = self.node_dir / "logs" / f"{name}.log"
        path = f"{self.bin_dir}{os.pathsep}/usr/sbin{os.pathsep}/sbin{os.pathsep}{os.environ.get('PATH', '')}"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.node_dir,
                env={**os.environ, "PATH": path, **(env or {})},
                start_new_session=True,
            )
        process = ManagedProcess(name, popen.pid, binary, log_path, popen)
        self.processes.append(process)
        self._save()
        return process

    def _write_config(self, name: str, text: str) -> Path:
        path = self.node_dir / "config" / name
        path.write_text(text)
        return path

    def _start_containerd(self) -> None:
        d = self.node_dir / "containerd"
        config = self._write_config(
            "containerd.toml",
            f"""version = 3
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause_image()}"

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's PID").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{_cni_bin_dir()}"]
    conf_dir = "{self.node_dir / "cni" / "net.d"}"
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc") or "runc"}"
        SystemdCgroup = false
""",
        )
        (self.node_dir / "cni" / "net.d" / "10-rerank.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": POD_BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.node_dir / "cni" / "ipam"),
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        self._spawn("containerd", [f"--config={config}", "--log-level=warn"])

    def _ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _run(str(self.bin_dir / "ctr"), f"--address={self.containerd_socket}", "-n", "k8s.io", *args,
                    check=check, timeout=timeout)  # fmt: skip

    def image_digests(self) -> dict[str, str]:
        """Image reference -> digest of every image in containerd's Kubernetes namespace."""
        result = self._ctr("images", "ls")
        digests: dict[str, str] = {}
        for line in result.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                digests[fields[0]] = fields[2]
        return digests

    def import_image(self, archive: Path) -> bool:
        """Import an OCI or docker archive into containerd (the kubelet finds it as if pulled).

        Skipped when every reference of the archive is present already with the same image ID (config
        digest, kept in a containerd label); returns whether an import happened."""
        image_id, refs = archive_image(archive)
        label = f"{IMAGE_ID_LABEL}={image_id}"
        present = self._image_labels()
        if refs and all(label in present.get(ref, "") for ref in refs):
            return False
        self._ctr("images", "import", str(archive))
        for ref in refs:
            self._ctr("images", "label", ref, label)
        return True

    def _image_labels(self) -> dict[str, str]:
        result = self._ctr("images", "ls")
        labels: dict[str, str] = {}
        for line in result.stdout.splitlines()[1:]:
            fields = line.split()
            if fields:
                labels[fields[0]] = fields[-1]
        return labels

    def _start_scheduler(self, plane: ControlPlane) -> None:
        from tests.support.controlplane import free_loopback_port

        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={plane.kubeconfig}",
                f"--authentication-kubeconfig={plane.kubeconfig}",
                f"--authorization-kubeconfig={plane.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_loopback_port()}",
                f"--cert-dir={self.node_dir / 'scheduler-certs'}",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self, plane: ControlPlane) -> None:
        from tests.support.controlplane import free_loopback_port

        config = self._write_config(
            "kube-proxy.json",
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(plane.kubeconfig)},
                    "mode": "iptables",
                    "hostnameOverride": NODE_NAME,
                    "bindAddress": NODE_IP,
                    "clusterCIDR": POD_SUBNET,
                    "healthzBindAddress": f"127.0.0.1:{free_loopback_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_loopback_port()}",
                    # Only the node IP: localhost NodePorts would need net.ipv4.conf.all.route_localnet=1.
                    "nodePortAddresses": [f"{NODE_IP}/32"],
                    # Zero: leave the host's conntrack sysctls alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
                    "detectLocalMode": "ClusterCIDR",
                }
            ),
        )
        self._spawn("kube-proxy", [f"--config={config}", "--v=1"])

    def _start_coredns(self, plane: ControlPlane) -> None:
        corefile = self._write_config(
            "Corefile",
            f""".:53 {{
    bind {NODE_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {plane.kubeconfig} rerank-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
""",
        )
        self._spawn("coredns", ["-conf", str(corefile)])

    def _start_kubelet(self, plane: ControlPlane) -> None:
        config = self._write_config(
            "kubelet.json",
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": NODE_IP,
                    "healthzBindAddress": "127.0.0.1",
                    "readOnlyPort": 0,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(plane.ca_cert)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    # Imported images cannot be pulled again: never collect them.
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    # Small absolute thresholds: on a shared machine other work fills the disk, and percentage
                    # defaults (10%, 15%) would evict test pods and collect imported images for it.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "256Mi",
                        "imagefs.available": "256Mi",
                    },
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "podLogsDir": str(self.node_dir / "pod-logs"),
                    "clusterDNS": [NODE_IP],
                    "clusterDomain": CLUSTER_DOMAIN,
                    "resolvConf": "",
                    "maxPods": 60,
                    "serializeImagePulls": False,
                    "nodeStatusUpdateFrequency": "5s",
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "10s",
                    "volumeStatsAggPeriod": "0s",
                    "shutdownGracePeriod": "0s",
                }
            ),
        )
        self.state["kubelet_started"] = time.time()
        self._spawn(
            "kubelet",
            [
                f"--config={config}",
                f"--kubeconfig={plane.kubeconfig}",
                f"--root-dir={self.node_dir / 'kubelet'}",
                f"--cert-dir={self.node_dir / 'kubelet' / 'pki'}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
        )

    def _wait(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise NodeError(
                        f"{process.name} exited during start-up (log {process.log_path}):\n{process.tail()}"
                    )
            if check():
                return
            time.sleep(0.2)
        raise NodeError(f"timed out waiting for {what}; logs in {self.node_dir / 'logs'}")

    def _node_ready(self, plane: ControlPlane) -> bool:
        # A Node object left in etcd by an earlier kubelet can say Ready: require a heartbeat from this one.
        status, body = plane.get(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        node = json.loads(body)
        if any(t["key"] == "node.kubernetes.io/not-ready" for t in node.get("spec", {}).get("taints") or []):
            return False  # the node-lifecycle controller lifts it once it sees the node Ready
        started_at = float(self.state.get("kubelet_started", 0))
        for condition in node.get("status", {}).get("conditions", []):
            if condition["type"] == "Ready" and condition["status"] == "True":
                heartbeat = calendar.timegm(
                    time.strptime(condition["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%SZ")
                )
                return heartbeat >= started_at - 1
        return False

    def healthy(self) -> bool:
        """True while every node process runs."""
        return bool(self.processes) and all(p.alive() for p in self.processes)

    def orphaned(self) -> bool:
        """True when the test session that started this node is gone (it can no longer tear it down)."""
        owner = self.state.get("owner_pid")
        return owner is not None and not Path(f"/proc/{owner}").exists()

    # -- teardown -------------------------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Undo everything recorded in the state file; returns what could not be undone (empty when clean)."""
        problems: list[str] = []
        by_name = {p.name: p for p in self.processes}
        # The kubelet first, so it restarts nothing; then every container process, then the shims.
        if "kubelet" in by_name:
            by_name["kubelet"].stop(timeout=10)
        for _ in range(3):
            pids = _kubepods_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if not pids:
                break
            time.sleep(0.5)
        for pid in _processes_mentioning(str(self.containerd_socket)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for process in reversed(self.processes):
            process.stop(timeout=10)
        leftovers = [p.name for p in self.processes if p.alive()]
        if leftovers:
            problems.append(f"still running: {', '.join(leftovers)}")
        problems += _unmount_under(self.node_dir)
        problems += _remove_cgroups("kubepods")
        for link in self.state.get("links", []):
            problems += _delete_bridge(link)
        problems += _delete_chains()
        for name, value in self.state.get("sysctls", {}).items():
            if value is not None and _read_sysctl(name) != value:
                _write_sysctl(name, value)
                if _read_sysctl(name) != value:
                    problems.append(f"sysctl {name} could not be restored to {value}")
        for path in self.state.get("host_paths_created", []):
            _unmount_under(Path(path))
            with contextlib.suppress(FileNotFoundError):
                if Path(path).is_symlink() or Path(path).is_file():
                    Path(path).unlink()
                else:
                    shutil.rmtree(path)
        _remove_cni_leftovers(self.state.get("shared_paths_created", []))
        if not problems:
            shutil.rmtree(self.node_dir, ignore_errors=True)
            if self.node_dir.exists():
                problems.append(f"{self.node_dir} could not be removed")
        return problems


def _remove_cni_leftovers(created: list[str]) -> None:
    """libcni's result cache of our network; then /var/lib/cni and /run/netns if we created them and they are
    empty (podman may have put its own entries there meanwhile)."""
    cache = Path("/var/lib/cni")
    ours = [f"results/{CNI_NETWORK}-*", "results/cni-loopback-*", f"networks/{CNI_NETWORK}"]  # go-cni names
    for path in [match for pattern in ours for match in cache.glob(pattern)]:
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in created:
        directories = sorted((p for p in Path(path).rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for directory in [*directories, Path(path)]:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _kubepods_pids() -> list[int]:
    pids: set[int] = set()
    for root in _cgroup_roots():
        base = root / "kubepods"
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    pids.discard(os.getpid())
    return sorted(pids)


def _cgroup_roots() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]
    return [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]


def _remove_cgroups(name: str) -> list[str]:
    problems = []
    for root in _cgroup_roots():
        top = root / name
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*dirs, top]:
            for _ in range(20):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        if top.exists():
            problems.append(f"cgroup {top} could not be removed")
    return problems


def _processes_mentioning(needle: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    pids_set = set(pids) - {os.getpid()}
    return sorted(pids_set)


def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        points.append(point)
    return points


def _unmount_under(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    for _ in range(5):
        targets = [p for p in _mounts() if p == str(directory) or p.startswith(prefix)]
        if not targets:
            return []
        for point in sorted(targets, key=len, reverse=True):
            _run("umount", "-l", point, check=False)
    left = [p for p in _mounts() if p == str(directory) or p.startswith(prefix)]
    return [f"mounts left: {', '.join(left)}"] if left else []


def _delete_bridge(name: str) -> list[str]:
    if not _link_exists(name):
        return []
    for port in Path(f"/sys/class/net/{name}/brif").glob("*"):
        _run("ip", "link", "delete", port.name, check=False)
    _run("ip", "link", "delete", name, check=False)
    return [f"interface {name} could not be deleted"] if _link_exists(name) else []


def _delete_chains() -> list[str]:
    problems = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("nat", "filter", "mangle"):
            listing = _run(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
            ours = {
                line.split()[1]
                for line in listing
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            }
            if not ours:
                continue
            # Rules in built-in chains that jump to ours, then our chains themselves.
            for line in listing:
                parts = shlex.split(line)  # rule comments are quoted
                if parts[0] == "-A" and parts[1] not in ours and ("-j" in parts or "-g" in parts):
                    target = parts[parts.index("-j" if "-j" in parts else "-g") + 1]
                    if target in ours:
                        _run(tool, "-w", "-t", table, "-D", *parts[1:], check=False)
            for chain in ours:
                _run(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(tool, "-w", "-t", table, "-X", chain, check=False)
            left = [
                line.split()[1]
                for line in _run(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            ]
            if left:
                problems.append(f"{tool} {table} chains left: {', '.join(left)}")
    return problems


@contextlib.contextmanager
def timed(label: str, sink: Callable[[str], None]) -> Iterator[None]:
    """Report how long the block took through ``sink``."""
    started = time.monotonic()
    yield
    sink(f"{label} in {time.monotonic() - started:.1f}s")


def start_cluster_with_node(
    cluster_dir: Path, node_dir: Path = DEFAULT_NODE_DIR, detached: bool = True
) -> tuple[ControlPlane, Node]:
    """Build what is missing, prepare the host, start the control plane on the node IP, then the node.
    On any failure everything already created is torn down before the error propagates."""
    from tests.support.controlplane import ensure_binaries

    plane_bin = ensure_binaries()
    node_bin = ensure_node_binaries()
    node = Node(node_dir=node_dir, bin_dir=node_bin, detached=detached)
    plane = ControlPlane(state_dir=cluster_dir, bin_dir=plane_bin, detached=detached, node_ip=NODE_IP)
    try:
        node.prepare_host()
        plane.start()
        node.start(plane)
    except BaseException:
        node.teardown() if node.state else None
        plane.stop()
        raise
    return plane, node


__all__ = [
    "NODE_IP",
    "NODE_NAME",
    "ControlPlaneError",
    "Node",
    "NodeError",
    "ensure_node_binaries",
    "node_binaries_dir",
    "preflight",
    "probe_image_archive",
    "probe_image_ref",
    "start_cluster_with_node",
]


def probe_image_archive() -> Path:
    """The node tier's own test image (hack/node-probe), as built by ``hack/node.sh build``."""
    return node_binaries_dir() / "node-probe.oci.tar"


def probe_image_ref() -> str:
    """Reference under which :func:`probe_image_archive` is imported."""
    result = subprocess.run(
        ["bash", str(NODE_BUILD_SCRIPT), "probe-image"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    return result.stdout.strip()


def host_snapshot() -> dict[str, Any]:
    """What the node may change on this host: compared before start and after teardown."""
    chains: list[str] = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("nat", "filter", "mangle"):
            listing = _run(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
            chains += [
                f"{tool}/{table}/{line.split()[1]}"
                for line in listing
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            ]
    # Only what is the node's: other work on this machine may add interfaces and mounts of its own meanwhile.
    ours = (str(DEFAULT_NODE_DIR), *HOST_PATHS)
    return {
        "links": sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("rr")),
        "chains": sorted(chains),
        "sysctls": {name: _read_sysctl(name) for name in OWN_SYSCTLS},
        "host_paths": {path: os.path.lexists(path) for path in HOST_PATHS},
        "mounts": sorted({m for m in _mounts() if m.startswith(ours)}),
        "kubepods_cgroups": sorted(
            str(root / "kubepods") for root in _cgroup_roots() if (root / "kubepods").exists()
        ),
    }


def snapshot_difference(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`host_snapshot` results."""
    return [
        f"{key}: before {before[key]!r}, after {after[key]!r}" for key in before if before[key] != after[key]
    ]
