"""A real GitOps engine for tests: Flux's source-controller and kustomize-controller as host processes, fed
by a Git server on loopback.

* :class:`GitServer` serves bare repositories over smart HTTP with ``git http-backend`` (the CGI program
  shipped with git) behind a small threaded HTTP server on 127.0.0.1 — what the engine clones from.
* :class:`GitWorkTree` is the test's clone: it writes files, commits and pushes, and reverts commits, like a
  user of the repository.
* :class:`FluxControllers` runs the pinned binaries built by ``hack/gitops.sh`` against the test control
  plane with the admin kubeconfig: all namespaces, no leader election, metrics and health endpoints on free
  loopback ports, and source-controller's artifact server on loopback (``--storage-adv-addr``), so
  kustomize-controller downloads the artifacts from there exactly as it does in a cluster.

The processes die with the test process at the latest (``PR_SET_PDEATHSIG``) and are stopped by the fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.controlplane import (
    ControlPlaneError,
    ManagedProcess,
    _set_parent_death_signal,
    free_loopback_port,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "gitops.sh"
CONTROLLERS = ("source-controller", "kustomize-controller")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "GitOps Test",
    "GIT_AUTHOR_EMAIL": "gitops-test@example.invalid",
    "GIT_COMMITTER_NAME": "GitOps Test",
    "GIT_COMMITTER_EMAIL": "gitops-test@example.invalid",
}


# -- binaries ------------------------------------------------------------------------------------------------


def gitops_bin_dir() -> Path:
    """The cache directory that holds (or will hold) the pinned controllers and their CRDs."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "bindir"], check=True, capture_output=True, text=True, cwd=REPO_ROOT
    )
    return Path(result.stdout.strip().splitlines()[-1])


def missing_gitops_binaries(bin_dir: Path) -> list[str]:
    """Controllers (or their CRD folders) not present yet in ``bin_dir``."""
    return [
        name
        for name in CONTROLLERS
        if not os.access(bin_dir / name, os.X_OK) or not (bin_dir / "crds" / name).is_dir()
    ]


def ensure_gitops_binaries() -> Path:
    """The bin directory; builds the controllers first when missing (the first time takes minutes)."""
    bin_dir = gitops_bin_dir()
    if not missing_gitops_binaries(bin_dir):
        return bin_dir
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "build"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"building the GitOps controllers failed (exit {result.returncode})")
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    if missing := missing_gitops_binaries(bin_dir):
        raise ControlPlaneError(f"GitOps build finished but {', '.join(missing)} missing in {bin_dir}")
    return bin_dir


def crd_files(bin_dir: Path) -> list[Path]:
    """The CRD manifests of both controllers, as released with their sources."""
    return sorted((bin_dir / "crds").glob("*/*.yaml"))


# -- Git over smart HTTP -------------------------------------------------------------------------------------


def _git_exec_path() -> Path:
    return Path(
        subprocess.run(["git", "--exec-path"], check=True, capture_output=True, text=True).stdout.strip()
    )


class GitServer:
    """``git http-backend`` behind a threaded HTTP server on 127.0.0.1; serves the bare repos in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend = _git_exec_path() / "git-http-backend"
        if not os.access(self.backend, os.X_OK):
            raise ControlPlaneError(f"{self.backend} missing: run hack/gitops.sh build (installs git)")
        self.requests: list[tuple[str, str, int]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="git-server", daemon=True)
        self._thread.start()

    def url(self, repository: str) -> str:
        """Clone URL of the bare repository ``root/<repository>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{repository}"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _cgi(self) -> None:
                parts = urlsplit(self.path)
                body = self._body()
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GATEWAY_INTERFACE": "CGI/1.1",
                    "SERVER_PROTOCOL": "HTTP/1.1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": parts.path,
                    "QUERY_STRING": parts.query,
                    "REMOTE_ADDR": self.client_address[0],
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                }
                for header in ("Content-Encoding", "Git-Protocol"):
                    if value := self.headers.get(header):
                        env["HTTP_" + header.upper().replace("-", "_")] = value
                result = subprocess.run(
                    [str(server.backend)], input=body, capture_output=True, env=env, timeout=60
                )
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = result.stdout.partition(b"\n\n")
                status, headers = 200, []
                for line in head.decode("latin-1").splitlines():
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                if result.returncode != 0 and not head:
                    status, payload = 500, result.stderr
                server.requests.append((self.command, self.path, status))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def do_GET(self) -> None:
                self._cgi()

            def do_POST(self) -> None:
                self._cgi()

            def do_HEAD(self) -> None:
                self._cgi()

        return Handler


@dataclass
class GitWorkTree:
    """The test's clone of a bare repository served by :class:`GitServer`; every commit is pushed at once."""

    path: Path
    bare: Path
    branch: str = "main"

    @classmethod
    def create(cls, server: GitServer, name: str, work_dir: Path) -> GitWorkTree:
        """A new empty bare repository ``<name>.git`` on the server and a work tree for it."""
        bare = server.root / f"{name}.git"
        tree = cls(path=work_dir / name, bare=bare)
        subprocess.run(["git", "init", "-q", "--bare", "-b", tree.branch, str(bare)], check=True)
        subprocess.run(["git", "init", "-q", "-b", tree.branch, str(tree.path)], check=True)
        tree.git("remote", "add", "origin", str(bare))
        return tree

    def git(self, *args: str) -> str:
        """Run git in the work tree; returns stdout."""
        result = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **GIT_IDENTITY},
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def write(self, relative: str, text: str) -> None:
        """Write a file of the work tree (not committed yet)."""
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def commit(self, message: str) -> str:
        """Commit everything and push; returns the new commit sha."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.push()

    def revert(self, sha: str) -> str:
        """``git revert`` one commit and push; returns the new commit sha."""
        self.git("revert", "--no-edit", sha)
        return self.push()

    def push(self) -> str:
        """Push the branch; returns its head."""
        self.git("push", "-q", "origin", f"HEAD:{self.branch}")
        return self.head()

    def head(self) -> str:
        """Sha of the current commit."""
        return self.git("rev-parse", "HEAD").strip()


# -- the controllers -----------------------------------------------------------------------------------------


@dataclass
class FluxControllers:
    """source-controller and kustomize-controller running against one control plane."""

    bin_dir: Path
    kubeconfig: Path
    work_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    health: dict[str, str] = field(default_factory=dict)
    started_in_seconds: float | None = None

    def start(self, timeout: float = 60.0) -> FluxControllers:
        """Start both controllers and return once their readiness endpoints answer."""
        started = time.monotonic()
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        storage = self.work_dir / "artifacts"
        storage.mkdir(exist_ok=True)
        artifact_address = f"127.0.0.1:{free_loopback_port()}"
        common = [
            "--watch-all-namespaces=true",
            "--enable-leader-election=false",
            "--log-level=debug",
            "--log-encoding=json",
        ]
        try:
            self._spawn(
                "source-controller",
                [
                    *common,
                    f"--storage-path={storage}",
                    f"--storage-addr={artifact_address}",
                    f"--storage-adv-addr={artifact_address}",
                    "--concurrent=2",
                ],
                logs,
            )
            self._spawn(
                "kustomize-controller",
                [
                    *common,
                    "--concurrent=2",
                    "--no-remote-bases=true",
                    # A commit that arrives while the engine waits for health cancels the wait at once.
                    "--feature-gates=CancelHealthCheckOnNewRevision=true",
                ],
                logs,
            )
            deadline = started + timeout
            for process in self.processes:
                self._wait_ready(process, deadline)
        except BaseException:
            self.stop()
            raise
        self.started_in_seconds = time.monotonic() - started
        return self

    def _spawn(self, name: str, args: list[str], logs: Path) -> None:
        metrics, health = free_loopback_port(), free_loopback_port()
        binary = str(self.bin_dir / name)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [binary, *args, f"--metrics-addr=127.0.0.1:{metrics}", f"--health-addr=127.0.0.1:{health}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                # The controllers read RUNTIME_NAMESPACE for events and leader election; not watching one.
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "RUNTIME_NAMESPACE": "flux-system"},
                start_new_session=True,
                preexec_fn=_set_parent_death_signal,
            )
        self.processes.append(ManagedProcess(name, popen.pid, binary, log_path, popen))
        self.health[name] = f"http://127.0.0.1:{health}/readyz"

    def _wait_ready(self, process: ManagedProcess, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not process.alive():
                raise ControlPlaneError(f"{process.name} exited during start-up:\n{process.tail(30)}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.health[process.name], timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise ControlPlaneError(f"{process.name} not ready in time:\n{process.tail(30)}")

    def stop(self) -> None:
        """Stop both controllers (safe to call more than once)."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def alive(self) -> bool:
        """True while both controllers run."""
        return len(self.processes) == len(CONTROLLERS) and all(p.alive() for p in self.processes)

    def log_records(self, name: str) -> Iterator[dict[str, Any]]:
        """The JSON log records of one controller so far."""
        path = self.work_dir / "logs" / f"{name}.log"
        if not path.exists():
            return
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    yield json.loads(line)

    def apply_outputs(self, namespace: str, name: str) -> list[tuple[str, dict[str, str]]]:
        """(revision, {object: action}) of every server-side apply kustomize-controller logged for one
        Kustomization, oldest first; actions are ``created``, ``configured`` or ``unchanged``."""
        outputs = []
        for record in self.log_records("kustomize-controller"):
            if record.get("msg") != "server-side apply completed":
                continue
            if (record.get("controller"), record.get("namespace"), record.get("name")) == (
                "kustomization",
                namespace,
                name,
            ):
                outputs.append((str(record.get("revision")), dict(record.get("output") or {})))
        return outputs

    def tail(self, name: str, lines: int = 40) -> str:
        """Last lines of a controller's log, for failure messages."""
        path = self.work_dir / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
