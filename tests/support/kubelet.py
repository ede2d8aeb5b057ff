"""ProcessKubelet: runs the pods of a real control plane as local processes, so tests see real Jobs and pods.

There is no container runtime here. ``ProcessKubelet`` registers a Node, plays scheduler (binds unscheduled
pods to that node through the ``pods/binding`` subresource) and kubelet (runs each container's ``command`` +
``args`` as a local process and writes the pod status the controllers read).

What a pod's process gets, as on a real node:

* a private mount namespace (``unshare --mount --propagation private``) in which every volume is
  bind-mounted at its ``mountPath``: a PVC from a per-claim directory (:meth:`ProcessKubelet.claim_dir`),
  emptyDir, Secret, ConfigMap, downwardAPI and projected volumes (service-account tokens come from the
  TokenRequest API), hostPath; and the container's ``terminationMessagePath`` (``/dev/termination-log``)
  bound to a per-container file. Paths that do not exist on the host are created only inside the namespace:
  the directory that would hold them is covered by a tmpfs that re-binds its original entries (``/`` itself
  via a chroot), so nothing ever appears on the host — in particular no ``/dev/termination-log``.
* its own loopback address as pod IP (127.0.0.2, 127.0.0.3, ...): a ``sitecustomize`` on ``PYTHONPATH``
  rewrites wildcard binds (``0.0.0.0``, ``""``, ``::``) of Python processes to the pod IP, so many pods can
  each listen on port 8000. Clients reach a pod at ``status.podIP``.
* environment: ``PATH`` starting with this Python's ``bin`` directory (the project's console scripts),
  ``env`` and ``envFrom`` resolved from Secrets/ConfigMaps/downward API, ``$(VAR)`` expansion,
  ``KUBERNETES_SERVICE_HOST/PORT`` pointing at the API server, plus ``extra_env`` given to the kubelet (e.g.
  ``HF_ENDPOINT`` of a fake hub).
* real ``httpGet``/``tcpSocket``/``exec`` readiness, liveness and startup probes against ``podIP:port``.

Pod status follows the kubelet: Pending → Running (Ready once every container's readiness probe passed) →
Succeeded/Failed for ``restartPolicy`` Never/OnFailure pods, with exit codes and termination messages
(policy ``FallbackToLogsOnError`` honoured). Containers of ``Always``/``OnFailure`` pods are restarted when
they exit, with a short back-off (1 s doubling to 10 s, shorter than a real kubelet's 10 s to 5 min so tests
stay fast); ``restartCount``, ``lastState`` and ``CrashLoopBackOff`` are reported as a kubelet does.
Readiness/startup probes run at most every ``probe_period_cap`` seconds (default 1 s) instead of
``periodSeconds`` — failure deadlines are kept — so pods become Ready quickly. When a pod is deleted its
process group gets SIGTERM, then SIGKILL after the pod's grace period (capped at ``grace_cap``), and the pod
object is removed (grace 0), like a kubelet does.

PVCs: the kubelet also plays storage provisioner and marks each Pending PVC ``Bound`` (capacity = request);
its data lives in :meth:`ProcessKubelet.claim_dir`.

Not emulated: images (ignored; a container without ``command`` needs an entry in ``image_entrypoints``),
resource limits, security contexts (processes run as the test user), node affinity and taints (only
``nodeSelector`` is checked), non-Python programs binding wildcard addresses, ``kubectl logs/exec`` (use
:meth:`ProcessKubelet.logs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import urllib3

JsonObject = dict[str, Any]

KUBELET_VERSION = "v1.34.4"
_PR_SET_PDEATHSIG = 1
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ==========================================================================================================
# Minimal REST client (thread-safe, raw JSON): the kubelet works with unstructured pods and needs watches that
# can be shut down from another thread.
# ============================================================================================================


class KubeApiError(RuntimeError):
    """An API request answered with a non-2xx status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class KubeRest:
    """Raw JSON access to the API server with client-certificate or bearer-token credentials."""

    def __init__(
        self,
        server: str,
        *,
        ca_file: str | None,
        cert_file: str | None = None,
        key_file: str | None = None,
        token: str | None = None,
    ) -> None:
        import urllib3

        self.server = server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "process-kubelet"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if ca_file else "CERT_NONE",
            ca_certs=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )

    @classmethod
    def from_api_client(cls, api_client: Any) -> KubeRest:
        """Build from a ``kubernetes.client.ApiClient`` (uses its host, CA, client cert or token)."""
        config = api_client.configuration
        token = None
        auth = (config.api_key or {}).get("authorization") or (config.api_key or {}).get("BearerToken")
        if auth:
            token = str(auth).removeprefix("Bearer ").strip()
        return cls(
            config.host,
            ca_file=config.ssl_ca_cert,
            cert_file=config.cert_file,
            key_file=config.key_file,
            token=token,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """Send a request and return the decoded JSON body; raises :class:`KubeApiError` on non-2xx."""
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        response = self._pool.request(method, url, body=data, headers=headers, timeout=timeout, retries=False)
        payload = response.data
        if response.status >= 300:
            message = payload.decode(errors="replace")
            with contextlib.suppress(ValueError):
                message = json.loads(payload).get("message", message)
            raise KubeApiError(response.status, message)
        return json.loads(payload) if payload else None

    def get(self, path: str, **params: str) -> Any:
        """GET ``path`` with query ``params``."""
        return self.request("GET", path, params=params or None)

    def watch(self, path: str, params: Mapping[str, str]) -> WatchStream:
        """Open a watch on collection ``path``; iterating the stream yields ``(type, object)`` events."""
        query = dict(params, watch="true", allowWatchBookmarks="true")
        response = self._pool.request(
            "GET",
            f"{self.server}{path}?{urllib.parse.urlencode(query)}",
            headers=self._headers,
            preload_content=False,
            timeout=None,
            retries=False,
        )
        if response.status >= 300:
            body = response.read().decode(errors="replace")
            response.release_conn()
            raise KubeApiError(response.status, body)
        return WatchStream(response)


class WatchStream:
    """Events of one watch request; :meth:`close` may be called from any thread to end the iteration."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, JsonObject]]:
        buffer = b""
        try:
            for chunk in self._response.stream(None, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]
        except Exception:
            if not self._closed:
                raise
        finally:
            self._response.release_conn()

    def close(self) -> None:
        """Unblock the reader and end the stream."""
        self._closed = True
        with contextlib.suppress(Exception):
            self._response.shutdown()
        with contextlib.suppress(Exception):
            self._response.close()


class _Watcher(threading.Thread):
    """List-then-watch loop over one collection, calling ``handler(event_type, object)`` from this thread."""

    def __init__(
        self,
        rest: KubeRest,
        path: str,
        handler: Callable[[str, JsonObject], None],
        on_relist: Callable[[list[JsonObject]], None] | None = None,
        name: str = "watcher",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._rest = rest
        self._path = path
        self._handler = handler
        self._on_relist = on_relist
        self._stopped = threading.Event()
        self._stream: WatchStream | None = None
        self.synced = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                listing = self._rest.get(self._path)
                items: list[JsonObject] = listing.get("items", [])
                if self._on_relist is not None:
                    self._on_relist(items)
                for item in items:
                    self._handler("ADDED", item)
                self.synced.set()
                version = listing["metadata"]["resourceVersion"]
                while not self._stopped.is_set():
                    self._stream = self._rest.watch(
                        self._path, {"resourceVersion": version, "timeoutSeconds": "300"}
                    )
                    if self._stopped.is_set():
                        self._stream.close()
                        return
                    expired = False
                    for event_type, obj in self._stream:
                        if event_type == "ERROR":
                            expired = True  # 410 Gone: our resourceVersion is too old, relist
                            break
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if event_type != "BOOKMARK":
                            self._handler(event_type, obj)
                    if expired:
                        break
            except Exception as error:
                if self._stopped.is_set():
                    return
                self.errors.append(repr(error))
                self._stopped.wait(0.5)

    def stop(self) -> None:
        """End the loop and close the open watch."""
        self._stopped.set()
        if self._stream is not None:
            self._stream.close()


# ==========================================================================================================
# Sandbox: runs inside the private mount namespace, then execs the container's program. Stdlib only: it is
# started as `python -I -S kubelet.py --sandbox SPEC`.
# ============================================================================================================


class _Mounter:
    """Builds the container's view of the file system inside a private mount namespace."""

    def __init__(self, scratch: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.scratch = scratch
        self.root = "/"
        self._private: set[PurePosixPath] = set()
        self._volumes: list[PurePosixPath] = []
        self._tmpfs_devices: set[int] = set()  # st_dev of every tmpfs this sandbox mounted
        self._counter = itertools.count()

    def mount(
        self, source: str, target: str, fstype: str | None, flags: int, data: str | None = None
    ) -> None:
        """mount(2); raises OSError naming both paths."""
        result = self._libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
            data.encode() if data else None,
        )  # fmt: skip
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"mount {source} -> {target}: {os.strerror(errno)}")

    def mount_scratch(self) -> None:
        """A private tmpfs for the sandbox's own bookkeeping (and the new root, when one is needed)."""
        self.mount("tmpfs", str(self.scratch), "tmpfs", 0, "mode=700")
        self._tmpfs_devices.add(self.scratch.stat().st_dev)

    def host(self, path: PurePosixPath) -> Path:
        """Where a container path is, seen from the sandbox process before chroot."""
        return Path(self.root) / path.relative_to("/")

    def resolve(self, path: str) -> tuple[PurePosixPath, list[str]]:
        """Split a container path into its deepest existing ancestor (symlinks resolved) and the rest."""
        parts = deque(p for p in path.split("/") if p)
        current = PurePosixPath("/")
        hops = 0
        while parts:
            part = parts.popleft()
            if part == ".":
                continue
            if part == "..":
                current = current.parent
                continue
            candidate = current / part
            host_path = self.host(candidate)
            if host_path.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks resolving {path}")
                link = str(host_path.readlink())
                if link.startswith("/"):
                    current = PurePosixPath("/")
                parts.extendleft(reversed([p for p in link.split("/") if p]))
                continue
            if not host_path.exists():
                return current, [part, *parts]
            current = candidate
        return current, []

    def _writable(self, path: PurePosixPath) -> bool:
        # Private: a directory whose own entries live in our tmpfs (a shadowed directory, or one we created in
        # such a directory) — its subdirectories that are binds of host directories are NOT private. A volume
        # is writable throughout.
        return path in self._private or any(path == v or v in path.parents for v in self._volumes)

    def _populate(self, source_dir: Path, target_dir: Path) -> None:
        # Re-create every entry of source_dir in target_dir (a fresh tmpfs) as a bind mount or symlink.
        for entry in source_dir.iterdir():
            target = target_dir / entry.name
            if entry.is_symlink():
                target.symlink_to(entry.readlink())
            elif entry.is_dir():
                target.mkdir()
                self.mount(str(entry), str(target), None, _MS_BIND | _MS_REC)
            else:
                target.touch()
                self.mount(str(entry), str(target), None, _MS_BIND)

    def shadow(self, path: PurePosixPath) -> None:
        """Make directory ``path`` writable in this namespace only: a tmpfs over it re-binds its entries."""
        if self._writable(path):
            return
        if path == PurePosixPath("/"):
            new_root = self.scratch / "root"
            new_root.mkdir()
            self._populate(Path("/"), new_root)
            self.root = str(new_root)
        else:
            host_path = self.host(path)
            original = self.scratch / f"original-{next(self._counter)}"
            original.mkdir()
            self.mount(str(host_path), str(original), None, _MS_BIND | _MS_REC)
            self.mount("tmpfs", str(host_path), "tmpfs", 0, "mode=755")
            self._tmpfs_devices.add(host_path.stat().st_dev)
            host_path.chmod(original.stat().st_mode & 0o7777)
            self._populate(original, host_path)
        self._private.add(path)

    def needs_new_root(self, path: str) -> bool:
        """True when ``path`` cannot be created without changing ``/`` itself."""
        root = PurePosixPath("/")
        existing, missing = self.resolve(path)
        return bool(missing) and existing == root and not self._writable(root)

    def ensure(self, path: str, is_dir: bool) -> Path:
        """Make ``path`` exist in this namespace (never on the host); returns its sandbox-side path."""
        existing, missing = self.resolve(path)
        if not missing:
            return self.host(existing)
        self.shadow(existing)
        current = existing
        for index, part in enumerate(missing):
            # Last line of defence: never create anything in a directory of the host's file systems.
            in_volume = any(current == v or v in current.parents for v in self._volumes)
            if not in_volume and self.host(current).stat().st_dev not in self._tmpfs_devices:
                raise OSError(f"refusing to create {current / part}: {current} is not private to the pod")
            current = current / part
            if index < len(missing) - 1 or is_dir:
                self.host(current).mkdir()
                self._private.add(current)
            else:
                self.host(current).touch()
        return self.host(current)

    def bind(self, source: str, path: str, read_only: bool) -> None:
        """Bind-mount host ``source`` at container ``path``."""
        is_dir = Path(source).is_dir()
        target = self.ensure(path, is_dir=is_dir)
        self.mount(source, str(target), None, _MS_BIND | _MS_REC)
        if read_only:
            self.mount("none", str(target), None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
        if is_dir:
            # Writes below a volume go to the volume (nested mount points are created there, as on a node).
            self._volumes.append(self.resolve(path)[0])


def _covers(mount_path: PurePosixPath, path: PurePosixPath) -> bool:
    """True when a mount at ``mount_path`` hides ``path``."""
    return path == mount_path or mount_path in path.parents


def _sandbox_main(spec_path: str) -> NoReturn:
    """Set up the mounts of the JSON spec, then exec the container's program; exit 127 on failure."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != spec["parent_pid"]:
            raise OSError("the process kubelet is gone")
        if Path("/proc/self/ns/mnt").stat().st_ino == spec["host_mount_namespace"]:
            raise OSError("refusing to mount: not inside a private mount namespace")
        mounter = _Mounter(Path(spec["scratch"]))
        mounter.mount_scratch()
        mounts = sorted(spec["mounts"], key=lambda m: m["path"].rstrip("/").count("/"))
        working_dir = spec.get("working_dir") or "/"
        # Host directories the program itself lives in (the project and its venv, say under /tmp in a CI
        # clone) stand in for the image: a volume mounted over an ancestor (an emptyDir at /tmp) must not hide
        # them, nor the sources of later mounts. Mounting into a new root keeps the host view until chroot.
        keep = [PurePosixPath(p) for p in spec.get("keep_visible", [])]
        hidden = [
            p
            for p in [*keep, *(PurePosixPath(m["source"]) for m in mounts)]
            if any(_covers(PurePosixPath(m["path"]), p) for m in mounts)
        ]
        if hidden or any(mounter.needs_new_root(p) for p in [*(m["path"] for m in mounts), working_dir]):
            mounter.shadow(PurePosixPath("/"))
        for mount in mounts:
            mounter.bind(mount["source"], mount["path"], mount["read_only"])
        for path in keep:
            if path in hidden and Path(path).is_dir():
                mounter.bind(str(path), str(path), read_only=True)
        mounter.ensure(working_dir, is_dir=True)
        if mounter.root != "/":
            os.chroot(mounter.root)
        os.chdir(working_dir)
        argv: list[str] = spec["argv"]
        os.execvpe(argv[0], argv, os.environ)
    except OSError as error:
        message = f"process-kubelet: cannot start container: {error}"
        print(message, file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            Path(spec["termination_log"]).write_text(message)
        os._exit(127)


# Imported by every Python process of a pod (PYTHONPATH): binds to a wildcard address go to the pod IP,
# so pods do not collide on the shared loopback interface.
_SITECUSTOMIZE = '''\
"""Rewrites wildcard binds to the pod IP (process kubelet)."""
import os
import socket

_POD_IP = os.environ.get("PROCESS_KUBELET_POD_IP")
_original_bind = socket.socket.bind


def _pod_bind(self, address):
    if _POD_IP and isinstance(address, tuple) and address[0] in ("", "0.0.0.0", "::", "::0"):
        if self.family == socket.AF_INET6:
            v6only = self.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            if v6only:
                # Pods have no IPv6 address: park the IPv6 half of a dual listener on an unused port.
                return _original_bind(self, ("::1", 0) + tuple(address[2:]))
            return _original_bind(self, ("::ffff:" + _POD_IP,) + tuple(address[1:]))
        return _original_bind(self, (_POD_IP,) + tuple(address[1:]))
    return _original_bind(self, address)


if _POD_IP:
    socket.socket.bind = _pod_bind
'''


# ==========================================================================================================
# The kubelet
# ============================================================================================================

_ip_counter = itertools.count(2)
_ip_lock = threading.Lock()


def _next_pod_ip() -> str:
    # Process-wide, so kubelets created one after another in a test session never hand out the same address.
    with _ip_lock:
        n = next(_ip_counter)
    return f"127.0.{n // 250}.{n % 250 + 2}"


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, unknown refs stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, value)


def _http_probe(url_host: str, action: JsonObject, port: int, timeout: float) -> bool:
    scheme = str(action.get("scheme", "HTTP")).upper()
    path = action.get("path") or "/"
    headers = {h["name"]: h["value"] for h in action.get("httpHeaders", [])}
    headers.setdefault("User-Agent", f"kube-probe/{KUBELET_VERSION.lstrip('v').rsplit('.', 1)[0]}")
    connection: http.client.HTTPConnection
    if scheme == "HTTPS":
        connection = http.client.HTTPSConnection(
            url_host, port, timeout=timeout, context=ssl._create_unverified_context()
        )
    else:
        connection = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return 200 <= status < 400


@dataclass
class _ProbeState:
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0


@dataclass
class _Container:
    """One container of a pod: its spec and the state of its current (or last) process."""

    spec: JsonObject
    init: bool
    dir: Path
    restart_count: int = 0
    popen: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started_monotonic: float = 0.0
    log_offset: int = 0
    state: JsonObject = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JsonObject = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_at: float | None = None
    backoff: float = 1.0
    readiness: _ProbeState = field(default_factory=_ProbeState)
    liveness: _ProbeState = field(default_factory=_ProbeState)
    startup: _ProbeState = field(default_factory=_ProbeState)

    @property
    def name(self) -> str:
        """Container name."""
        return str(self.spec["name"])

    @property
    def log_path(self) -> Path:
        """All output of every run of this container."""
        return self.dir / "log"

    @property
    def termination_log(self) -> Path:
        """Host file mounted at the container's terminationMessagePath."""
        return self.dir / "termination-log"

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def terminated(self) -> bool:
        """True once the last run ended and no restart is pending."""
        return "terminated" in self.state


class _PodWorker(threading.Thread):
    """Runs one pod to completion (or deletion). Owns its processes: they never outlive this thread."""

    def __init__(self, kubelet: ProcessKubelet, pod: JsonObject) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.pod_ip = _next_pod_ip()
        self.dir = kubelet.work_dir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.init_containers = [
            _Container(c, True, self.dir / "init" / c["name"]) for c in spec.get("initContainers", [])
        ]
        self.containers = [
            _Container(c, False, self.dir / "containers" / c["name"]) for c in spec["containers"]
        ]
        self.start_time = _now()
        self.volumes_ready = False
        self.volume_paths: dict[str, Path] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.init_done = not self.init_containers
        self.failed_init = False
        self.conditions: dict[str, JsonObject] = {}
        self.published: JsonObject | None = None
        self.publish_retry_at = 0.0
        self.deleting = threading.Event()
        self.gone = threading.Event()
        self.stop_requested = threading.Event()
        self._lock = threading.Lock()

    # -- events from the watch thread -----------------------------------------------------------------------

    def update(self, pod: JsonObject) -> None:
        """Newest version of the pod object."""
        with self._lock:
            self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    def deleted(self) -> None:
        """The pod object is gone from the API."""
        self.gone.set()
        self.deleting.set()

    # -- main loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:  # keep the kubelet alive; the error is visible in the pod's kubelet log
            self.kubelet.record_error(f"{self.namespace}/{self.pod_name}: {error!r}")
        finally:
            self._kill_all(grace=0.0)
            self.kubelet.worker_finished(self)

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        while not (self.deleting.is_set() or self.stop_requested.is_set()):
            if not self.volumes_ready:
                self._prepare()
            if self.volumes_ready:
                self._step()
            self._publish()
            self.stop_requested.wait(0.1 if self._active() else 0.5)
        if self.deleting.is_set() and not self.stop_requested.is_set():
            self._kill_all(grace=self._grace_period())
            self.kubelet.force_delete(self.namespace, self.pod_name, self.uid)

    def _active(self) -> bool:
        return any(c.running or c.restart_at is not None for c in [*self.init_containers, *self.containers])

    def _grace_period(self) -> float:
        meta = self.pod["metadata"]
        grace = meta.get(
            "deletionGracePeriodSeconds", self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        )
        return float(min(grace, self.kubelet.grace_cap))

    # -- volumes and environment ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        try:
            for volume in self.pod["spec"].get("volumes", []):
                self.volume_paths[volume["name"]] = self.kubelet.volumes.materialize(self, volume)
            for container in [*self.init_containers, *self.containers]:
                self.env[container.name] = self.kubelet.environment.build(self, container.spec)
        except (_ConfigError, KubeApiError) as error:
            reason = error.reason if isinstance(error, _ConfigError) else "CreateContainerConfigError"
            for container in [*self.init_containers, *self.containers]:
                container.state = {"waiting": {"reason": reason, "message": str(error)}}
            return
        self.volumes_ready = True
        for container in [*self.init_containers, *self.containers]:
            container.state = {
                "waiting": {"reason": "PodInitializing" if container.init else "ContainerCreating"}
            }

    # -- state machine --------------------------------------------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        if not self.init_done:
            self._step_init(now)
            return
        for container in self.containers:
            self._step_container(container, now)

    def _step_init(self, now: float) -> None:
        if self.failed_init:
            return
        for container in self.init_containers:
            if container.terminated and container.state["terminated"]["exitCode"] == 0:
                continue
            if container.popen is None or container.restart_at is not None:
                if container.restart_at is None or now >= container.restart_at:
                    self._start(container)
                return
            if container.running:
                return
            code = self._reap(container)
            if code != 0:
                if self.restart_policy == "Never":
                    self.failed_init = True
                    return
                self._schedule_restart(container, now)
            return
        self.init_done = True
        for container in self.containers:
            container.state = {"waiting": {"reason": "ContainerCreating"}}

    def _step_container(self, container: _Container, now: float) -> None:
        if container.popen is None:
            self._start(container)
            return
        if container.restart_at is not None:
            if now >= container.restart_at:
                self._start(container)
            return
        if container.running:
            self._probe(container, now)
            return
        if container.terminated:
            return
        code = self._reap(container)
        if self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0):
            self._schedule_restart(container, now)

    def _schedule_restart(self, container: _Container, now: float) -> None:
        if now - container.started_monotonic > 10:
            container.backoff = 1.0  # it ran long enough: forget earlier crashes, as the kubelet does
        container.last_state = container.state
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {container.backoff:.0f}s restarting failed container={container.name} "
                f"pod={self.pod_name}_{self.namespace}({self.uid})",
            }
        }
        container.restart_at = now + container.backoff
        container.backoff = min(container.backoff * 2, 10.0)
        container.restart_count += 1

    def _start(self, container: _Container) -> None:
        container.restart_at = None
        container.dir.mkdir(parents=True, exist_ok=True)
        container.termination_log.write_bytes(b"")
        try:
            argv = self._argv(container)
        except _ConfigError as error:
            container.state = {"waiting": {"reason": error.reason, "message": str(error)}}
            container.popen = None
            self.volumes_ready = False  # retry from scratch on the next tick, like the kubelet's sync loop
            return
        spec_path = container.dir / "sandbox.json"
        scratch = container.dir / "scratch"
        scratch.mkdir(exist_ok=True)
        sandbox = {
            "argv": argv,
            "mounts": self._mounts(container),
            "working_dir": container.spec.get("workingDir"),
            "scratch": str(scratch),
            "keep_visible": self.kubelet.program_dirs(),
            "termination_log": str(container.termination_log),
            "parent_pid": os.getpid(),
            "host_mount_namespace": Path("/proc/self/ns/mnt").stat().st_ino,
        }
        spec_path.write_text(json.dumps(sandbox, indent=2))
        with container.log_path.open("ab") as log:
            container.log_offset = log.tell()
            container.popen = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", sys.executable, "-I", "-S",
                 str(Path(__file__).resolve()), "--sandbox", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env[container.name],
                start_new_session=True,  # own group: deletion signals all the container spawned
            )  # fmt: skip
        container.started_at = _now()
        container.started_monotonic = time.monotonic()
        container.state = {"running": {"startedAt": container.started_at}}
        container.ready = False
        container.started = "startupProbe" not in container.spec
        container.readiness = _ProbeState()
        container.liveness = _ProbeState()
        container.startup = _ProbeState()

    def _argv(self, container: _Container) -> list[str]:
        spec = container.spec
        command = spec.get("command")
        if not command:
            image = str(spec.get("image", ""))
            command = self.kubelet.entrypoint_for(image)
            if command is None:
                raise _ConfigError(
                    "CreateContainerConfigError",
                    f"container {container.name} has no command and image {image!r} has no entry in the "
                    "process kubelet's image_entrypoints",
                )
        env = self.env[container.name]
        return [expand_vars(str(part), env) for part in [*command, *spec.get("args", [])]]

    def _mounts(self, container: _Container) -> list[JsonObject]:
        mounts: list[JsonObject] = []
        for mount in container.spec.get("volumeMounts", []):
            source = self.volume_paths.get(mount["name"])
            if source is None:
                raise _ConfigError("CreateContainerConfigError", f"volume {mount['name']!r} not found")
            sub_path = mount.get("subPath") or ""
            if sub_path:
                source = source / sub_path
                if not source.exists():
                    source.mkdir(parents=True)  # the kubelet creates missing subPath directories
            mounts.append(
                {"source": str(source), "path": mount["mountPath"], "read_only": bool(mount.get("readOnly"))}
            )
        termination_path = container.spec.get("terminationMessagePath") or "/dev/termination-log"
        mounts.append(
            {"source": str(container.termination_log), "path": termination_path, "read_only": False}
        )
        return mounts

    def _reap(self, container: _Container) -> int:
        assert container.popen is not None
        returncode = container.popen.wait()
        code = returncode if returncode >= 0 else 128 - returncode
        message = container.termination_log.read_bytes()[:4096].decode(errors="replace")
        policy = container.spec.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            with container.log_path.open("rb") as log:
                log.seek(container.log_offset)
                lines = log.read().decode(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
        terminated: JsonObject = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": container.started_at,
            "finishedAt": _now(),
            "containerID": f"process://{container.popen.pid}",
        }
        if returncode < 0:
            terminated["signal"] = -returncode
        if message:
            terminated["message"] = message
        container.state = {"terminated": terminated}
        container.ready = False
        return code

    # -- probes ---------------------------------------------------------------------------------------------

    def _probe(self, container: _Container, now: float) -> None:
        spec = container.spec
        cap = self.kubelet.probe_period_cap
        since_start = now - container.started_monotonic
        if not container.started:
            probe = spec["startupProbe"]
            state = container.startup
            if since_start < probe.get("initialDelaySeconds", 0) or now < state.next_at:
                return
            state.next_at = now + min(probe.get("periodSeconds", 10), cap)
            if self._run_probe(container, probe):
                container.started = True
            else:
                limit = probe.get("initialDelaySeconds", 0) + probe.get("failureThreshold", 3) * probe.get(
                    "periodSeconds", 10
                )
                if since_start > limit:
                    self._kill(container, grace=self._grace_period())
            return
        readiness = spec.get("readinessProbe")
        if readiness is None:
            container.ready = True
        elif since_start >= readiness.get("initialDelaySeconds", 0) and now >= container.readiness.next_at:
            state = container.readiness
            state.next_at = now + min(readiness.get("periodSeconds", 10), cap)
            if self._run_probe(container, readiness):
                state.successes, state.failures = state.successes + 1, 0
                if state.successes >= readiness.get("successThreshold", 1):
                    container.ready = True
            else:
                state.successes, state.failures = 0, state.failures + 1
                if state.failures >= readiness.get("failureThreshold", 3) or not container.ready:
                    container.ready = False
        liveness = spec.get("livenessProbe")
        if liveness is not None and since_start >= liveness.get("initialDelaySeconds", 0):
            state = container.liveness
            if now >= state.next_at:
                state.next_at = now + liveness.get("periodSeconds", 10)
                if self._run_probe(container, liveness):
                    state.failures = 0
                else:
                    state.failures += 1
                    if state.failures >= liveness.get("failureThreshold", 3):
                        self._kill(container, grace=self._grace_period())

    def _resolve_port(self, container: _Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for candidate in container.spec.get("ports", []):
            if candidate.get("name") == port:
                return int(candidate["containerPort"])
        raise ValueError(f"unknown named port {port!r}")

    def _run_probe(self, container: _Container, probe: JsonObject) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                action = probe["httpGet"]
                host = action.get("host") or self.pod_ip
                return _http_probe(host, action, self._resolve_port(container, action["port"]), timeout)
            if "tcpSocket" in probe:
                action = probe["tcpSocket"]
                port = self._resolve_port(container, action["port"])
                import socket

                with socket.create_connection((action.get("host") or self.pod_ip, port), timeout=timeout):
                    return True
            if "exec" in probe:
                # Runs on the host with the container's environment (not inside its mount namespace).
                result = subprocess.run(
                    probe["exec"]["command"],
                    env=self.env[container.name],
                    capture_output=True,
                    timeout=timeout,
                )
                return result.returncode == 0
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return False
        return True  # grpc probes are not emulated: treated as passing

    # -- stopping -------------------------------------------------------------------------------------------

    def _kill(self, container: _Container, grace: float) -> None:
        popen = container.popen
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)  # also whatever the program left behind in its group
        popen.wait()

    def _kill_all(self, grace: float) -> None:
        processes = [c.popen for c in [*self.init_containers, *self.containers] if c.popen is not None]
        running = [p for p in processes if p.poll() is None]
        for popen in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for popen in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for popen in processes:
            # Also the group of exited containers: a program may have left children behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()

    # -- status ---------------------------------------------------------------------------------------------

    def _phase(self) -> str:
        if self.failed_init:
            return "Failed"
        if not self.init_done or not self.volumes_ready:
            return "Pending"
        if all(c.popen is None for c in self.containers):
            return "Pending"
        if all(c.terminated for c in self.containers):
            if all(c.state["terminated"]["exitCode"] == 0 for c in self.containers):
                return "Succeeded"
            return "Failed"
        return "Running"

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> JsonObject:
        status = "True" if ok else "False"
        previous = self.conditions.get(kind)
        transition = previous["lastTransitionTime"] if previous and previous["status"] == status else _now()
        condition: JsonObject = {"type": kind, "status": status, "lastProbeTime": None,
                                 "lastTransitionTime": transition}  # fmt: skip
        if not ok and reason:
            condition["reason"] = reason
        if not ok and message:
            condition["message"] = message
        self.conditions[kind] = condition
        return condition

    def _container_status(self, container: _Container) -> JsonObject:
        status: JsonObject = {
            "name": container.name,
            "image": container.spec.get("image", ""),
            "imageID": f"process-kubelet://{container.spec.get('image', '')}",
            "ready": container.ready and container.running,
            "started": container.started and container.running,
            "restartCount": container.restart_count,
            "state": container.state,
            "lastState": container.last_state,
        }
        if container.popen is not None:
            status["containerID"] = f"process://{container.popen.pid}"
        return status

    def status(self) -> JsonObject:
        """The pod status this kubelet reports right now."""
        phase = self._phase()
        unready = [c.name for c in self.containers if not (c.ready and c.running)]
        completed = phase in ("Succeeded", "Failed")
        not_ready_reason = "PodCompleted" if completed else "ContainersNotReady"
        not_ready_message = "" if completed else f"containers with unready status: [{' '.join(unready)}]"
        uninitialized = [c.name for c in self.init_containers if not c.terminated]
        conditions = [
            self._condition("PodReadyToStartContainers", self.volumes_ready),
            self._condition(
                "Initialized",
                self.init_done,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(uninitialized)}]",
            ),
            self._condition("Ready", not unready and not completed, not_ready_reason, not_ready_message),
            self._condition(
                "ContainersReady", not unready and not completed, not_ready_reason, not_ready_message
            ),
            self._condition("PodScheduled", True),
        ]
        status: JsonObject = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        return status

    def _publish(self) -> None:
        status = self.status()
        comparable = json.dumps(status, sort_keys=True)
        if self.published is not None and json.dumps(self.published, sort_keys=True) == comparable:
            return
        if time.monotonic() < self.publish_retry_at:
            return
        try:
            self.kubelet.rest.request(
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
                content_type="application/merge-patch+json",
            )
        except KubeApiError as error:
            if error.status == 404:
                self.deleted()
                return
            self._publish_failed(f"status update rejected: {error}")
            return
        except Exception as error:  # connection trouble: the API server may be restarting; try again
            self._publish_failed(f"status update failed: {error!r}")
            return
        self.published = status

    def _publish_failed(self, message: str) -> None:
        self.kubelet.record_error(f"{self.namespace}/{self.pod_name}: {message}")
        self.publish_retry_at = time.monotonic() + 1.0


class _ConfigError(Exception):
    """The pod cannot start yet (missing Secret, unsupported volume...); retried like the kubelet does."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _decode_all(secret: JsonObject) -> dict[str, bytes]:
    import base64

    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


class _VolumeMaterializer:
    """Turns pod volumes into host directories/files that the sandbox bind-mounts."""

    def __init__(self, kubelet: ProcessKubelet) -> None:
        self.kubelet = kubelet

    def _get(self, path: str) -> JsonObject | None:
        try:
            result: JsonObject = self.kubelet.rest.get(path)
            return result
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    def secret(self, namespace: str, name: str, optional: bool) -> dict[str, bytes]:
        """Decoded data of a Secret; {} for a missing optional one."""
        secret = self._get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if secret is None:
            if optional:
                return {}
            raise _ConfigError("CreateContainerConfigError", f'secret "{name}" not found')
        return _decode_all(secret)

    def config_map(self, namespace: str, name: str, optional: bool) -> dict[str, bytes]:
        """Data of a ConfigMap (text and binary); {} for a missing optional one."""
        config_map = self._get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if config_map is None:
            if optional:
                return {}
            raise _ConfigError("CreateContainerConfigError", f'configmap "{name}" not found')
        data = {k: v.encode() for k, v in (config_map.get("data") or {}).items()}
        data.update(_decode_all({"data": config_map.get("binaryData") or {}}))
        return data

    @staticmethod
    def _write(directory: Path, files: Mapping[str, bytes], mode: int) -> None:
        for relative, content in files.items():
            path = directory / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)

    @staticmethod
    def _pick(data: Mapping[str, bytes], items: Sequence[JsonObject] | None) -> dict[str, bytes]:
        if not items:
            return dict(data)
        return {item["path"]: data[item["key"]] for item in items if item["key"] in data}

    def _downward(self, worker: _PodWorker, items: Sequence[JsonObject]) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        for item in items:
            if "fieldRef" in item:
                files[item["path"]] = self.kubelet.environment.field_value(worker, item["fieldRef"]).encode()
        return files

    def materialize(self, worker: _PodWorker, volume: JsonObject) -> Path:
        """Host path holding the volume's content."""
        namespace = worker.namespace
        name: str = volume["name"]
        target = worker.dir / "volumes" / name
        if "persistentVolumeClaim" in volume:
            return self.kubelet.claim_dir(namespace, volume["persistentVolumeClaim"]["claimName"])
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            return path
        target.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            return target
        if "secret" in volume:
            source = volume["secret"]
            data = self.secret(namespace, source["secretName"], bool(source.get("optional")))
            self._write(target, self._pick(data, source.get("items")), source.get("defaultMode", 0o644))
            return target
        if "configMap" in volume:
            source = volume["configMap"]
            data = self.config_map(namespace, source["name"], bool(source.get("optional")))
            self._write(target, self._pick(data, source.get("items")), source.get("defaultMode", 0o644))
            return target
        if "downwardAPI" in volume:
            source = volume["downwardAPI"]
            self._write(
                target, self._downward(worker, source.get("items", [])), source.get("defaultMode", 0o644)
            )
            return target
        if "projected" in volume:
            files: dict[str, bytes] = {}
            for projection in volume["projected"].get("sources", []):
                files.update(self._projection(worker, projection))
            self._write(target, files, volume["projected"].get("defaultMode", 0o644))
            return target
        kind = next((key for key in volume if key != "name"), "unknown")
        raise _ConfigError(
            "CreateContainerConfigError", f"volume type {kind} is not supported by the process kubelet"
        )

    def _projection(self, worker: _PodWorker, projection: JsonObject) -> dict[str, bytes]:
        namespace = worker.namespace
        if "serviceAccountToken" in projection:
            source = projection["serviceAccountToken"]
            account = worker.pod["spec"].get("serviceAccountName") or "default"
            spec: JsonObject = {
                "expirationSeconds": source.get("expirationSeconds", 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": worker.pod_name,
                    "uid": worker.uid,
                },
            }
            if source.get("audience"):
                spec["audiences"] = [source["audience"]]
            try:
                token = self.kubelet.rest.request(
                    "POST",
                    f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
                )
            except KubeApiError as error:
                raise _ConfigError("CreateContainerConfigError", f"service account token: {error}") from error
            return {source["path"]: token["status"]["token"].encode()}
        if "configMap" in projection:
            source = projection["configMap"]
            data = self.config_map(namespace, source["name"], bool(source.get("optional")))
            return self._pick(data, source.get("items"))
        if "secret" in projection:
            source = projection["secret"]
            data = self.secret(namespace, source["name"], bool(source.get("optional")))
            return self._pick(data, source.get("items"))
        if "downwardAPI" in projection:
            return self._downward(worker, projection["downwardAPI"].get("items", []))
        return {}


class _EnvironmentBuilder:
    """Computes a container's process environment like the kubelet (plus host essentials)."""

    def __init__(self, kubelet: ProcessKubelet) -> None:
        self.kubelet = kubelet

    def field_value(self, worker: _PodWorker, field_ref: JsonObject) -> str:
        """Value of a downward-API ``fieldRef``."""
        path: str = field_ref["fieldPath"]
        meta = worker.pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.kubelet.node_name,
            "spec.serviceAccountName": worker.pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": worker.pod_ip,
            "status.podIPs": worker.pod_ip,
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        raise _ConfigError("CreateContainerConfigError", f"unsupported fieldRef {path}")

    def build(self, worker: _PodWorker, container: JsonObject) -> dict[str, str]:
        """The full environment of the container's process."""
        kubelet = self.kubelet
        env: dict[str, str] = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": worker.pod_name,
            # The checkout running the tests, ahead of whatever an editable install points at.
            "PYTHONPATH": os.pathsep.join([str(kubelet.shim_dir), *kubelet.source_roots()]),
            "PROCESS_KUBELET_POD_IP": worker.pod_ip,
        }
        server = urllib.parse.urlsplit(kubelet.rest.server)
        if server.hostname:
            env["KUBERNETES_SERVICE_HOST"] = server.hostname
            env["KUBERNETES_SERVICE_PORT"] = str(server.port or 443)
        env.update(kubelet.extra_env)
        namespace = worker.namespace
        materializer = kubelet.volumes
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                ref = source["secretRef"]
                data = materializer.secret(namespace, ref["name"], bool(ref.get("optional")))
            else:
                ref = source["configMapRef"]
                data = materializer.config_map(namespace, ref["name"], bool(ref.get("optional")))
            env.update({prefix + key: value.decode(errors="replace") for key, value in data.items()})
        for variable in container.get("env", []):
            name = variable["name"]
            if "valueFrom" not in variable:
                env[name] = expand_vars(str(variable.get("value", "")), env)
                continue
            value_from = variable["valueFrom"]
            if "fieldRef" in value_from:
                env[name] = self.field_value(worker, value_from["fieldRef"])
            elif "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                data = materializer.secret(namespace, ref["name"], bool(ref.get("optional")))
                if ref["key"] not in data and not ref.get("optional"):
                    raise _ConfigError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}",
                    )
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
            elif "configMapKeyRef" in value_from:
                ref = value_from["configMapKeyRef"]
                data = materializer.config_map(namespace, ref["name"], bool(ref.get("optional")))
                if ref["key"] not in data and not ref.get("optional"):
                    raise _ConfigError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in ConfigMap {namespace}/{ref['name']}",
                    )
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
            elif "resourceFieldRef" in value_from:
                env[name] = (
                    str(os.cpu_count() or 1) if "cpu" in value_from["resourceFieldRef"]["resource"] else "0"
                )
        return env


class ProcessKubelet:
    """A node whose pods are local processes. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    ``api`` is a ``kubernetes.client.ApiClient`` or a :class:`KubeRest` with rights to bind pods, write pod
    and
    node status, create nodes, read Secrets/ConfigMaps and request service-account tokens (admin in tests).
    """

    _names = itertools.count(1)

    def __init__(
        self,
        api: Any,
        work_dir: Path,
        *,
        node_name: str | None = None,
        node_labels: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        image_entrypoints: Mapping[str, Sequence[str]] | None = None,
        probe_period_cap: float = 1.0,
        grace_cap: float = 5.0,
        bind_claims: bool = True,
    ) -> None:
        self.rest = api if isinstance(api, KubeRest) else KubeRest.from_api_client(api)
        self.work_dir = work_dir
        self.node_name = node_name or f"process-kubelet-{os.getpid()}-{next(self._names)}"
        self.node_labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(node_labels or {}),
        }
        self.extra_env: dict[str, str] = dict(extra_env or {})
        self.image_entrypoints: dict[str, list[str]] = {
            k: list(v) for k, v in (image_entrypoints or {}).items()
        }
        self.probe_period_cap = probe_period_cap
        self.grace_cap = grace_cap
        self.bind_claims = bind_claims
        self.shim_dir = work_dir / "pyshim"
        self.volumes = _VolumeMaterializer(self)
        self.environment = _EnvironmentBuilder(self)
        self.errors: list[str] = []
        self._workers: dict[str, _PodWorker] = {}
        self._finished: set[str] = set()
        self._unschedulable: set[str] = set()
        self._lock = threading.Lock()
        self._watchers: list[_Watcher] = []
        self._started = False

    # -- public API -----------------------------------------------------------------------------------------

    def source_roots(self) -> list[str]:
        """The project's source roots (operator/, runtime/) of the checkout these tests run from."""
        project = Path(__file__).resolve().parents[2]
        return [str(project / "operator"), str(project / "runtime")]

    def program_dirs(self) -> list[str]:
        """Host directories every container needs, as its image would: Python, the project, the shims."""
        project = Path(__file__).resolve().parents[2]
        candidates = [Path(sys.prefix), Path(sys.base_prefix), project, self.shim_dir]
        dirs: list[Path] = []
        for path in sorted({p.resolve() for p in candidates}, key=lambda p: len(p.parts)):
            if not any(path == d or d in path.parents for d in dirs):
                dirs.append(path)
        return [str(d) for d in dirs]

    def start(self) -> ProcessKubelet:
        """Register the node and watch pods (and PVCs); returns once the first listing is processed."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.shim_dir.mkdir(exist_ok=True)
        (self.shim_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self._register_node()
        self._started = True
        self._watchers.append(
            _Watcher(self.rest, "/api/v1/pods", self._on_pod_event, self._on_pod_relist, name="kubelet-pods")
        )
        if self.bind_claims:
            self._watchers.append(
                _Watcher(
                    self.rest, "/api/v1/persistentvolumeclaims", self._on_claim_event, name="kubelet-pvcs"
                )
            )
        for watcher in self._watchers:
            watcher.start()
        for watcher in self._watchers:
            if not watcher.synced.wait(30):
                self.stop()
                raise RuntimeError(
                    f"process kubelet could not list from the API server: {watcher.errors[-1:]}"
                )
        return self

    def stop(self) -> None:
        """Stop watching, kill every container process, remove this node's pods (grace 0) and the Node."""
        if not self._started:
            return
        self._started = False
        for watcher in self._watchers:
            watcher.stop()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.stop_requested.set()
        for worker in workers:
            worker.join(timeout=30)
        for worker in workers:
            self.force_delete(worker.namespace, worker.pod_name, worker.uid)
        with contextlib.suppress(KubeApiError):
            self.rest.request("DELETE", f"/api/v1/nodes/{self.node_name}")
        for watcher in self._watchers:
            watcher.join(timeout=10)
        self._watchers.clear()

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """Host directory backing PVC ``namespace/claim`` for every pod that mounts it (made on demand)."""
        path = self.work_dir / "claims" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """Output of every run of a container (default: the pod's first), like ``kubectl logs``."""
        with self._lock:
            workers = [w for w in self._workers.values() if (w.namespace, w.pod_name) == (namespace, pod)]
        if not workers:
            pattern = f"{namespace}_{pod}_*"
            dirs = sorted((self.work_dir / "pods").glob(pattern))
            if not dirs:
                return ""
            base = dirs[-1]
            names = [container] if container else sorted(p.name for p in (base / "containers").iterdir())
            return (base / "containers" / names[0] / "log").read_text(errors="replace")
        worker = workers[-1]
        chosen = next((c for c in worker.containers + worker.init_containers if c.name == container), None)
        chosen = chosen or worker.containers[0]
        return chosen.log_path.read_text(errors="replace") if chosen.log_path.exists() else ""

    def pod_ip(self, namespace: str, pod: str) -> str | None:
        """The loopback address of a pod this kubelet runs."""
        with self._lock:
            for worker in self._workers.values():
                if (worker.namespace, worker.pod_name) == (namespace, pod):
                    return worker.pod_ip
        return None

    def entrypoint_for(self, image: str) -> list[str] | None:
        """Command of an image for containers that only give ``args`` (exact image, then name without tag)."""
        if image in self.image_entrypoints:
            return self.image_entrypoints[image]
        repository = re.sub(r"(@sha256:[0-9a-f]+|:[^/:]+)$", "", image)
        return self.image_entrypoints.get(repository)

    # -- internals used by workers --------------------------------------------------------------------------

    def record_error(self, message: str) -> None:
        """Keep an internal error for debugging (``kubelet.errors``)."""
        self.errors.append(message)

    def worker_finished(self, worker: _PodWorker) -> None:
        """Called by a worker thread when its pod is gone."""
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
                self._finished.add(worker.uid)

    def force_delete(self, namespace: str, name: str, uid: str) -> None:
        """Delete a pod with grace 0 (what the kubelet does once the containers stopped)."""
        with contextlib.suppress(KubeApiError):
            self.rest.request(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid},
                },
            )

    # -- node -----------------------------------------------------------------------------------------------

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": self.node_labels},
            "spec": {},
        }
        try:
            self.rest.request("POST", "/api/v1/nodes", node)
        except KubeApiError as error:
            if error.status != 409:
                raise
        memory_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory_kib}Ki", "pods": "110",
                    "ephemeral-storage": "100Gi"}  # fmt: skip
        now = _now()
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": "localhost"},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "process kubelet is ready",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                },
            ],
            "nodeInfo": {
                "machineID": "process-kubelet",
                "systemUUID": "process-kubelet",
                "bootID": str(os.getpid()),
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
            },
        }
        self.rest.request(
            "PATCH", f"/api/v1/nodes/{self.node_name}/status", {"status": status},
            content_type="application/merge-patch+json",
        )  # fmt: skip

    # -- pods -----------------------------------------------------------------------------------------------

    def _on_pod_relist(self, pods: list[JsonObject]) -> None:
        present = {pod["metadata"]["uid"] for pod in pods}
        with self._lock:
            vanished = [w for uid, w in self._workers.items() if uid not in present]
        for worker in vanished:
            worker.deleted()

    def _on_pod_event(self, event_type: str, pod: JsonObject) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            worker = self._workers.get(uid)
        if event_type == "DELETED":
            if worker is not None:
                worker.deleted()
            return
        if worker is not None:
            worker.update(pod)
            return
        spec = pod["spec"]
        node = spec.get("nodeName")
        if not node:
            self._schedule(pod)
            return
        if node != self.node_name or uid in self._finished:
            return
        if meta.get("deletionTimestamp"):
            self.force_delete(meta["namespace"], meta["name"], uid)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        worker = _PodWorker(self, pod)
        with self._lock:
            self._workers[uid] = worker
        worker.start()

    def _schedule(self, pod: JsonObject) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if (
            meta.get("deletionTimestamp")
            or spec.get("schedulerName", "default-scheduler") != "default-scheduler"
        ):
            return
        selector: Mapping[str, str] = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(key) != value for key, value in selector.items()):
            if meta["uid"] not in self._unschedulable:
                self._unschedulable.add(meta["uid"])
                condition = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: "
                    "1 node(s) didn't match Pod's node affinity/selector.",
                    "lastTransitionTime": _now(),
                    "lastProbeTime": None,
                }
                with contextlib.suppress(KubeApiError):
                    self.rest.request(
                        "PATCH",
                        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                        {"status": {"conditions": [condition]}},
                        content_type="application/strategic-merge-patch+json",
                    )
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.rest.request(
                "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding
            )
        except KubeApiError as error:
            if error.status != 409:  # 409: bound already (by us on an earlier event, or by someone else)
                self.record_error(f"binding {meta['namespace']}/{meta['name']}: {error}")

    # -- claims ---------------------------------------------------------------------------------------------

    def _on_claim_event(self, event_type: str, claim: JsonObject) -> None:
        meta = claim["metadata"]
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            return
        if claim.get("status", {}).get("phase") == "Bound":
            return
        spec = claim.get("spec", {})
        self.claim_dir(meta["namespace"], meta["name"])
        status = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
            "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
        }
        with contextlib.suppress(KubeApiError):
            self.rest.request(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{meta['name']}/status",
                {"status": status},
                content_type="application/merge-patch+json",
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sandbox"] and len(sys.argv) == 3:
        _sandbox_main(sys.argv[2])
    print("usage: kubelet.py --sandbox SPEC.json (internal)", file=sys.stderr)
    sys.exit(2)
