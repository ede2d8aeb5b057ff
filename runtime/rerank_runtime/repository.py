"""The model repository: versioned OpenVINO cross-encoder folders shared by exporter, runtime and operator.

Layout (one volume)::

    <root>/<served-name>/<N>/            N = 1, 2, 3 ...; served-name may contain '/'
        model.xml model.bin              cross-encoder IR, output = logits
        tokenizer.xml tokenizer.bin      pair tokenizer (query, document)
        text_tokenizer.xml/.bin          single-input tokenizer without special tokens
        config.json                      the source model's Hugging Face config
        manifest.json                    written last; a folder without a valid one is invisible
    <root>/<served-name>/current         optional {"version": N}
    <root>/<served-name>/.staging-*      exports in progress (invisible)
    <root>/<served-name>/.lock           serialises publish / promote / prune

A version is exported into a staging folder on the same volume and published by renaming it to ``<N>``;
a published version is never modified.  This module is the only code that knows the layout.

Published folders and files are readable by group and others (folders 0755, files 0644 or wider) whatever
the exporter's UID and umask: the runtime may run with another UID (RWX volumes where fsGroup is not applied,
NFS, a changed runAsUser).  A version the reader still cannot read is reported by ``unreadable_versions``,
never skipped silently.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydantic

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "current"
STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
LOCK_FILE = ".lock"
WeightFormat = Literal["fp32", "fp16", "int8", "int4"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = ("fp32", "fp16", "int8", "int4")
_HASH_CHUNK = 1 << 20


class RepositoryError(Exception):
    """A repository operation failed; the message is meant for the user."""


class VersionNotFoundError(RepositoryError):
    """The requested version does not exist or is not complete."""


class ChecksumMismatchError(RepositoryError):
    """A file of a published version differs from its manifest (names the file)."""


class VersionUnreadableError(RepositoryError):
    """A published version exists but this process may not read it (permissions)."""


class TokenizerInfo(pydantic.BaseModel):
    """How the runtime assembles (query, document) rows from single-text token ids."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    # bert: [CLS] q [SEP] d [SEP], token_type_ids 0 for "[CLS] q [SEP]" and 1 for "d [SEP]" (3 specials)
    # roberta: <s> q </s></s> d </s>, no token_type_ids (4 specials)
    kind: Literal["bert", "roberta"]
    cls_token_id: int
    sep_token_id: int
    pad_token_id: int
    uses_token_type_ids: bool

    @property
    def pair_special_tokens(self) -> int:
        """Number of special tokens a (query, document) row adds."""
        return 3 if self.kind == "bert" else 4


class Manifest(pydantic.BaseModel):
    """Contents of ``manifest.json``: what a version is and the checksum of every file in it."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    format_version: int = 1
    source: str
    revision: str | None
    weight_format: WeightFormat
    max_length: int
    model_type: str
    num_labels: int
    positive_label: int
    tokenizer: TokenizerInfo
    export_hash: str
    exporter_version: str
    created_at: str
    files: dict[str, str] = pydantic.Field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersion:
    """One complete (published) version of a served model."""

    name: str
    number: int
    path: Path
    manifest: Manifest

    def size_bytes(self) -> int:
        """Total size of the version's files on disk."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's contents, read in chunks so large weights do not load into memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_readable(root: Path) -> None:
    """Add group/other read (and search, on folders) permission to ``root`` and everything below it."""
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            path.chmod(stat.S_IMODE(mode) | 0o055)
        elif stat.S_ISREG(mode):
            path.chmod(stat.S_IMODE(mode) | 0o044)


def _mkdir_readable(path: Path) -> None:
    """``mkdir -p`` whose new folders are group/other-searchable whatever the umask (existing ones stay)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        with contextlib.suppress(OSError):  # a concurrent creator owns it; its own call widens it
            created.chmod(stat.S_IMODE(created.stat().st_mode) | 0o055)


def _unreadable_message(path: Path, exc: OSError) -> str:
    return (
        f"cannot read {path} as uid {os.geteuid()} gid {os.getegid()} ({exc.strerror}); publish the "
        "repository readable by group/others or run with the exporter's UID/fsGroup"
    )


def _write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON so readers see either the old or the new file, never a partial one (mode 0644)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600: unreadable for a runtime with another UID
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    _fsync_dir(path.parent)


def _version_number(entry_name: str) -> int | None:
    """Version folder names are positive decimal integers without leading zeros."""
    if entry_name.isascii() and entry_name.isdigit() and not entry_name.startswith("0"):
        return int(entry_name)
    return None


def validate_served_name(name: str) -> str:
    """Return ``name`` if it can be a served name (path components, no traversal), else raise."""
    parts = name.split("/")
    if not name or any(
        not part
        or part in {".", ".."}
        or part.startswith(".")
        or part == CURRENT_FILE
        or _version_number(part) is not None
        or "\\" in part
        or "\x00" in part
        for part in parts
    ):
        raise RepositoryError(
            f"invalid served name {name!r}: use '/'-separated components that are not empty, "
            "do not start with '.', and are not plain numbers or 'current'"
        )
    return name


def read_manifest(version_dir: Path) -> Manifest | None:
    """The manifest of a version folder, or None when it is missing or invalid (folder is invisible).

    Raises VersionUnreadableError when the folder or manifest exists but permissions forbid reading it.
    """
    path = version_dir / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except PermissionError as exc:
        raise VersionUnreadableError(_unreadable_message(path, exc)) from exc
    except OSError:
        return None
    try:
        return Manifest.model_validate_json(raw)
    except pydantic.ValidationError:
        return None


class _Lock:
    """An exclusive flock on a file; released on close (or by the kernel when the process dies)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def close(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the lock

    def __enter__(self) -> _Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModelRepository:
    """Versions of served models under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        return self.root / validate_served_name(name)

    def served_names(self) -> list[str]:
        """Served names with at least one complete version, sorted."""
        names: list[str] = []
        if not self.root.is_dir():
            return names
        for dirpath, dirnames, _ in os.walk(self.root):
            here = Path(dirpath)
            has_version = False
            descend: list[str] = []
            for child in dirnames:
                if child.startswith("."):
                    continue
                if _version_number(child) is not None:
                    try:
                        has_version = has_version or read_manifest(here / child) is not None
                    except VersionUnreadableError:
                        has_version = True  # served, so that the runtime reports the unreadable version
                else:
                    descend.append(child)
            dirnames[:] = descend  # never walk into version or hidden folders
            if has_version and here != self.root:
                names.append(here.relative_to(self.root).as_posix())
        return sorted(names)

    def versions(self, name: str) -> list[ModelVersion]:
        """Complete versions of ``name``, ascending by number."""
        model_dir = self._model_dir(name)
        found: list[ModelVersion] = []
        try:
            entries = list(os.scandir(model_dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            number = _version_number(entry.name)
            if number is None or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                manifest = read_manifest(Path(entry.path))
            except VersionUnreadableError:
                continue  # listed by unreadable_versions
            if manifest is not None:
                found.append(ModelVersion(name, number, Path(entry.path), manifest))
        return sorted(found, key=lambda v: v.number)

    def unreadable_versions(self, name: str) -> dict[int, str]:
        """Published versions of ``name`` this process may not read, with a message saying why."""
        found: dict[int, str] = {}
        try:
            entries = list(os.scandir(self._model_dir(name)))
        except FileNotFoundError:
            return found
        for entry in entries:
            number = _version_number(entry.name)
            if number is None or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                read_manifest(Path(entry.path))
            except VersionUnreadableError as exc:
                found[number] = f"version {number}: {exc}"
        return dict(sorted(found.items()))

    def get(self, name: str, number: int) -> ModelVersion:
        """The complete version ``number`` of ``name``; raises VersionNotFoundError."""
        path = self._model_dir(name) / str(number)
        manifest = read_manifest(path) if number > 0 else None
        if manifest is None:
            raise VersionNotFoundError(f"model {name!r} has no complete version {number}")
        return ModelVersion(name, number, path, manifest)

    def current_pointer(self, name: str) -> int | None:
        """The version named by ``current``, or None when there is no pointer."""
        path = self._model_dir(name) / CURRENT_FILE
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            number = json.loads(raw)["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"{path} is not a valid current pointer ({{'version': N}})") from exc
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise RepositoryError(f"{path} names an invalid version {number!r}")
        return number

    def resolve(self, name: str) -> ModelVersion | None:
        """The version to serve: exactly the pinned one when ``current`` exists, else the highest complete.

        Returns None when nothing can be served (no versions, or the pinned version is not complete).
        """
        pinned = self.current_pointer(name)
        if pinned is not None:
            try:
                return self.get(name, pinned)
            except VersionNotFoundError:
                return None
        versions = self.versions(name)
        return versions[-1] if versions else None

    def find_by_export_hash(self, name: str, export_hash: str) -> ModelVersion | None:
        """The lowest complete version whose manifest has ``export_hash``."""
        for version in self.versions(name):
            if version.manifest.export_hash == export_hash:
                return version
        return None

    # -- writing ---------------------------------------------------------------------------------------

    def _lock(self, name: str) -> _Lock:
        model_dir = self._model_dir(name)
        _mkdir_readable(model_dir)
        return _Lock(model_dir / LOCK_FILE)

    def promote(self, name: str, number: int) -> None:
        """Point ``current`` at the complete version ``number`` (atomic replace of the pointer)."""
        with self._lock(name):
            self.get(name, number)
            _write_json_atomic(self._model_dir(name) / CURRENT_FILE, {"version": number})

    def unpin(self, name: str) -> None:
        """Remove the ``current`` pointer so the highest complete version is served."""
        with self._lock(name), contextlib.suppress(FileNotFoundError):
            (self._model_dir(name) / CURRENT_FILE).unlink()

    def prune(self, name: str, keep: int, protect: Iterable[int] = ()) -> list[int]:
        """Delete versions beyond the newest ``keep``, never the current one nor a ``protect``ed one (a pin
        whose promotion has not happened yet); returns the deleted numbers."""
        if keep < 1:
            raise RepositoryError(f"keep must be at least 1, got {keep}")
        with self._lock(name):
            versions = self.versions(name)
            pinned = self.current_pointer(name)
            retained = {v.number for v in versions[-keep:]} | set(protect)
            if pinned is not None:
                retained.add(pinned)
            deleted: list[int] = []
            for version in versions:
                if version.number in retained:
                    continue
                self._remove_version_dir(version.path)
                deleted.append(version.number)
            return deleted

    def _remove_version_dir(self, path: Path) -> None:
        # Rename first so no reader ever sees a version folder with some files already gone.
        graveyard = path.with_name(f"{DELETING_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
        path.rename(graveyard)
        _fsync_dir(path.parent)
        shutil.rmtree(graveyard, ignore_errors=True)

    def verify(self, name: str, number: int) -> None:
        """Check every file of a version against its manifest; ChecksumMismatchError names the bad file."""
        version = self.get(name, number)
        expected = version.manifest.files
        if not expected:
            raise ChecksumMismatchError(f"{name} version {number}: manifest lists no files")
        for relative, digest in sorted(expected.items()):
            path = version.path / relative
            if not path.is_file():
                raise ChecksumMismatchError(f"{name} version {number}: {relative} is missing")
            if sha256_file(path) != digest:
                raise ChecksumMismatchError(
                    f"{name} version {number}: {relative} does not match its checksum"
                )
        on_disk = {p.relative_to(version.path).as_posix() for p in version.path.rglob("*") if p.is_file()} - {
            MANIFEST_FILE
        }
        extra = sorted(on_disk - set(expected))
        if extra:
            raise ChecksumMismatchError(f"{name} version {number}: {extra[0]} is not listed in the manifest")

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A fresh, invisible folder on the repository's volume to export into; removed unless published.

        The folder is flock-ed for as long as the block runs, which is how ``clean_stale_staging`` tells a
        live export from one whose process died.
        """
        model_dir = self._model_dir(name)
        _mkdir_readable(model_dir)
        while True:
            path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=model_dir))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A concurrent cleaner may have removed the folder between mkdtemp and flock.
            if os.fstat(fd).st_nlink > 0 and path.is_dir():
                break
            os.close(fd)
        try:
            yield path
        finally:
            try:
                if path.exists():
                    shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)

    def publish(self, name: str, staging_dir: Path, manifest: Manifest) -> ModelVersion:
        """Publish a staged export as the next version and return it.

        Checksums every file in ``staging_dir`` into the manifest (its ``files`` field is replaced), writes
        ``manifest.json`` last, then under the repository lock either renames the folder to the next number,
        or — when a version with the same export hash appeared meanwhile — discards the folder and returns
        that version.
        """
        staging_dir = Path(staging_dir)
        model_dir = self._model_dir(name)
        if staging_dir.parent.resolve() != model_dir.resolve() or not staging_dir.name.startswith(
            STAGING_PREFIX
        ):
            raise RepositoryError(f"{staging_dir} is not a staging folder of {name!r}")
        files: dict[str, str] = {}
        for path in sorted(staging_dir.rglob("*")):
            if path.is_file() and path.name != MANIFEST_FILE:
                with path.open("rb+") as handle:
                    os.fsync(handle.fileno())  # data must be on disk before the rename makes it visible
                files[path.relative_to(staging_dir).as_posix()] = sha256_file(path)
        if not files:
            raise RepositoryError(f"{staging_dir} is empty; nothing to publish")
        final_manifest = manifest.model_copy(update={"files": files})
        _write_json_atomic(staging_dir / MANIFEST_FILE, json.loads(final_manifest.model_dump_json()))
        _make_readable(staging_dir)  # mkdtemp made it 0700; the runtime may run with another UID
        with self._lock(name):
            existing = self.find_by_export_hash(name, manifest.export_hash)
            if existing is not None:
                shutil.rmtree(staging_dir, ignore_errors=True)
                return existing
            numbers = [n for e in os.scandir(model_dir) if (n := _version_number(e.name)) is not None]
            number = max(numbers, default=0) + 1
            target = model_dir / str(number)
            try:
                staging_dir.rename(target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise RepositoryError(f"{target} appeared while publishing") from exc
                raise
            _fsync_dir(model_dir)
            return ModelVersion(name, number, target, final_manifest)

    def clean_stale_staging(self, name: str) -> int:
        """Remove staging and half-deleted folders left by processes that died; returns how many."""
        model_dir = self._model_dir(name)
        removed = 0
        try:
            entries = list(os.scandir(model_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name.startswith(DELETING_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
                continue
            if not entry.name.startswith(STAGING_PREFIX):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live export holds it
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
            finally:
                os.close(fd)
        return removed
