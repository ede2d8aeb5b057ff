"""Where a model comes from: a local Hugging Face folder, or a repo on the Hugging Face Hub.

Hub access goes through huggingface-hub (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` are honoured). The
requested revision is resolved to a commit sha first; that sha is what gets downloaded and recorded, so a
branch moving later cannot change what a version contains. Request and download timeouts are set on
huggingface-hub so a stalled connection fails the export instead of hanging it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_runtime.exporter.errors import ExportError
from rerank_runtime.exporter.progress import NullProgress

# Only what conversion needs: weights, config and tokenizer files (no ONNX/TF/Flax copies).
_DOWNLOAD_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
]
_PYTORCH_PATTERNS = ["pytorch_model.bin", "pytorch_model*.bin", "pytorch_model.bin.index.json"]
_CONTENT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


@dataclass(frozen=True)
class ResolvedSource:
    """A source pinned to exact content: a hub commit sha, or a digest of a local folder's files."""

    source: str  # what the user asked for: repo id or absolute folder path
    revision: str | None  # commit sha for hub sources
    content_key: str  # revision for hub sources, sha256 over the folder's files for local ones
    local_dir: Path | None  # set for local folders


def resolve_local(path: Path) -> ResolvedSource:
    """Pin a local model folder by hashing the files conversion reads."""
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise ExportError(f"{path} has no config.json; is it a Hugging Face model folder?")
    digest = hashlib.sha256()
    names = sorted(
        p.name
        for p in path.iterdir()
        if p.is_file()
        and (
            p.name in _CONTENT_FILES
            or p.suffix in {".safetensors", ".model"}
            or p.name.startswith("pytorch_model")
        )
    )
    for name in names:
        digest.update(name.encode() + b"\0")
        with (path / name).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return ResolvedSource(str(path), None, "local:" + digest.hexdigest(), path)


def _configure_timeouts(timeout: float) -> None:
    """huggingface-hub reads these module constants at call time; the env vars only at import time."""
    from huggingface_hub import constants

    constants.HF_HUB_DOWNLOAD_TIMEOUT = int(max(1, timeout))
    constants.HF_HUB_ETAG_TIMEOUT = int(max(1, timeout))


def _hub_error(repo_id: str, revision: str | None, exc: Exception) -> ExportError:
    """Turn huggingface-hub / httpx exceptions into one line a user can act on."""
    import httpx
    from huggingface_hub import errors

    if isinstance(exc, errors.RevisionNotFoundError):
        return ExportError(f"revision {revision!r} not found in Hugging Face repo {repo_id!r}")
    if isinstance(exc, errors.GatedRepoError):
        return ExportError(
            f"Hugging Face repo {repo_id!r} is gated: accept its terms and use a token with access"
        )
    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401 and "Invalid credentials" in (exc.response.headers.get("X-Error-Message") or ""):
            return ExportError(
                f"the Hugging Face token was rejected (401) for repo {repo_id!r}; check the token"
            )
        if isinstance(exc, errors.RepositoryNotFoundError) or status in (401, 404):
            return ExportError(
                f"Hugging Face repo {repo_id!r} not found (or private without a valid token; HTTP {status})"
            )
        if status == 403:
            return ExportError(f"access to Hugging Face repo {repo_id!r} is forbidden (403) for this token")
        # 429 and 5xx are the hub's (or a proxy's) momentary state: worth another try later.
        transient = status == 408 or status == 429 or status >= 500
        return ExportError(
            f"the Hugging Face Hub answered HTTP {status} for repo {repo_id!r}", transient=transient
        )
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return ExportError(f"cannot download {repo_id!r}: {str(exc).strip().splitlines()[0]}")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        # Raised when the hub could not be reached for a file (connection error, timeout).
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, httpx.TimeoutException):
            return ExportError(
                f"download from the Hugging Face Hub timed out for repo {repo_id!r}", transient=True
            )
        return ExportError(f"cannot download {repo_id!r}: {str(exc).strip().splitlines()[0]}", transient=True)
    if isinstance(exc, httpx.TimeoutException):
        return ExportError(
            f"download from the Hugging Face Hub timed out for repo {repo_id!r}", transient=True
        )
    if isinstance(exc, httpx.HTTPError):
        return ExportError(f"cannot reach the Hugging Face Hub for repo {repo_id!r}: {exc}", transient=True)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ExportError(f"cannot download {repo_id!r}: {first}", transient=True)


def resolve_hub(repo_id: str, revision: str | None, token: str | None, timeout: float) -> ResolvedSource:
    """Resolve ``revision`` (branch, tag or sha; default main) of a hub repo to its commit sha."""
    import httpx
    from huggingface_hub import HfApi, errors

    _configure_timeouts(timeout)
    api = HfApi(token=token or False)
    try:
        info = api.model_info(repo_id, revision=revision, timeout=timeout)
    except (errors.HfHubHTTPError, errors.OfflineModeIsEnabled, httpx.HTTPError) as exc:
        raise _hub_error(repo_id, revision, exc) from exc
    if not info.sha:
        raise ExportError(f"the Hugging Face Hub returned no commit sha for {repo_id!r}")
    return ResolvedSource(repo_id, info.sha, info.sha, None)


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for filename in filenames:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / filename).stat().st_size
    return total


def _with_stall_guard(
    download: Callable[[], str],
    watch: Path,
    timeout: float,
    repo_id: str,
    on_progress: Callable[[int], None] | None = None,
) -> str:
    """Run ``download`` in a thread and fail when ``watch`` stops growing for ``timeout`` seconds.

    huggingface-hub's own timeouts apply per request, but after a timed-out request it retries with a
    60 s timeout and exponential backoff, so a dead connection can hold an export for many minutes. Progress
    on disk is what matters: a large model may take long, a stalled one must fail.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["path"] = download()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="hub-download", daemon=True)
    thread.start()
    initial = _tree_size(watch)  # a warm hub cache already holds part of the files
    last_size, last_change = -1, time.monotonic()
    while True:
        thread.join(timeout=min(0.5 if on_progress else 1.0, timeout / 4))
        if not thread.is_alive():
            break
        size = _tree_size(watch)
        if on_progress is not None:
            on_progress(max(0, size - initial))
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change > timeout:
            # The thread is stuck in a socket read; it is a daemon and dies with the process.
            raise ExportError(
                f"download from the Hugging Face Hub stalled for repo {repo_id!r}: no data for {timeout:g} s",
                transient=True,
            )
    if "error" in outcome:
        raise outcome["error"]
    return str(outcome["path"])


def download_hub(
    resolved: ResolvedSource,
    token: str | None,
    timeout: float,
    download_dir: Path,
    *,
    config_only: bool = False,
    progress: NullProgress | None = None,
) -> Path:
    """Download the files needed for conversion at the resolved commit; returns the local folder.

    ``config_only`` fetches just the configs, so an unsuitable model is refused before gigabytes of weights.
    ``progress`` hears the number of files, their total size and the bytes on disk as they arrive.

    Downloads go to huggingface-hub's cache when ``HF_HOME``/``HF_HUB_CACHE`` is set (reused by retries),
    otherwise into ``download_dir``. A download that makes no progress for ``timeout`` seconds fails.
    """
    import httpx
    from huggingface_hub import HfApi, constants, errors, snapshot_download

    _configure_timeouts(timeout)
    assert resolved.revision is not None
    repo_id = resolved.source
    revision = resolved.revision
    use_cache = bool(os.environ.get("HF_HOME") or os.environ.get("HF_HUB_CACHE"))
    if use_cache:
        watch = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    else:
        watch = download_dir
    progress = progress or NullProgress()
    try:
        if config_only:
            patterns = ["config.json", "tokenizer_config.json"]
        else:
            tree = HfApi(token=token or False).list_repo_tree(repo_id, revision=revision, recursive=True)
            sizes = {entry.path: getattr(entry, "size", None) for entry in tree if hasattr(entry, "size")}
            patterns = list(_DOWNLOAD_PATTERNS)
            if not any(f.endswith(".safetensors") for f in sizes):
                patterns += _PYTORCH_PATTERNS
            # The same glob matching snapshot_download applies to allow_patterns.
            wanted = [f for f in sizes if any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
            known = [sizes[f] for f in wanted]
            total = sum(s for s in known if s is not None) if all(s is not None for s in known) else None
            progress.download_started(total, len(wanted))

        def download() -> str:
            return str(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=patterns,
                    token=token or False,
                    etag_timeout=timeout,
                    max_workers=4,
                    local_dir=None if use_cache else str(download_dir),
                )
            )

        path = _with_stall_guard(
            download, watch, timeout, repo_id, None if config_only else progress.download_advanced
        )
        if not config_only:
            progress.download_finished()
    except (
        errors.HfHubHTTPError,
        errors.OfflineModeIsEnabled,
        errors.LocalEntryNotFoundError,
        httpx.HTTPError,
    ) as exc:
        raise _hub_error(repo_id, revision, exc) from exc
    local = Path(path)
    if not (local / "config.json").is_file():
        raise ExportError(f"Hugging Face repo {repo_id!r} has no config.json at {revision}")
    return local
