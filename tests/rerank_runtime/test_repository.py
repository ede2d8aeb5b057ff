"""ModelRepository: layout, atomic publish, current pointer, retention, verification, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rerank_runtime.repository import (
    ChecksumMismatchError,
    Manifest,
    ModelRepository,
    RepositoryError,
    TokenizerInfo,
    VersionNotFoundError,
)

NAME = "BAAI/bge-reranker-base"


def make_manifest(export_hash: str = "a" * 64) -> Manifest:
    return Manifest(
        source="BAAI/bge-reranker-base",
        revision="0123456789abcdef0123456789abcdef01234567",
        weight_format="int8",
        max_length=512,
        model_type="xlm-roberta",
        num_labels=1,
        positive_label=0,
        tokenizer=TokenizerInfo(
            kind="roberta", cls_token_id=0, sep_token_id=2, pad_token_id=1, uses_token_type_ids=False
        ),
        export_hash=export_hash,
        exporter_version="test",
        created_at="2026-01-01T00:00:00Z",
        files={},
    )


def publish_one(repo: ModelRepository, export_hash: str, payload: bytes = b"weights") -> int:
    with repo.staging(NAME) as staging:
        (staging / "model.xml").write_bytes(b"<net/>")
        (staging / "model.bin").write_bytes(payload)
        return repo.publish(NAME, staging, make_manifest(export_hash)).number


def test_publish_creates_numbered_version_with_checksums(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    assert repo.served_names() == []
    assert publish_one(repo, "a" * 64) == 1
    assert publish_one(repo, "b" * 64) == 2

    assert repo.served_names() == [NAME]
    versions = repo.versions(NAME)
    assert [v.number for v in versions] == [1, 2]
    manifest = json.loads((tmp_path / NAME / "2" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.xml", "model.bin"}
    assert manifest["export_hash"] == "b" * 64
    # Nothing but the version folders (and hidden bookkeeping) is left in the model folder.
    assert sorted(p.name for p in (tmp_path / NAME).iterdir() if not p.name.startswith(".")) == ["1", "2"]
    repo.verify(NAME, 2)


def test_staging_and_incomplete_folders_are_invisible(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with repo.staging(NAME) as staging:
        (staging / "model.bin").write_bytes(b"x")
        (staging / "manifest.json").write_text(make_manifest().model_dump_json())
        assert repo.served_names() == []
        assert repo.versions(NAME) == []
    assert not staging.exists(), "an unpublished staging folder is removed when the block ends"

    (tmp_path / NAME / "3").mkdir(parents=True)  # no manifest
    (tmp_path / NAME / "4").mkdir()
    (tmp_path / NAME / "4" / "manifest.json").write_text("{not json")
    assert repo.served_names() == []
    assert repo.resolve(NAME) is None
    with pytest.raises(VersionNotFoundError):
        repo.get(NAME, 3)
    # The next publish skips past the invisible folders instead of colliding with them.
    assert publish_one(repo, "c" * 64) == 5


def test_staging_removed_when_export_fails(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with pytest.raises(RuntimeError), repo.staging(NAME) as staging:
        (staging / "model.bin").write_bytes(b"x")
        raise RuntimeError("conversion failed")
    assert not staging.exists()
    assert repo.versions(NAME) == []


def test_current_pointer_and_resolve(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    publish_one(repo, "a" * 64)
    publish_one(repo, "b" * 64)
    assert repo.current_pointer(NAME) is None
    assert repo.resolve(NAME) is not None and repo.resolve(NAME).number == 2  # type: ignore[union-attr]

    repo.promote(NAME, 1)
    assert json.loads((tmp_path / NAME / "current").read_text()) == {"version": 1}
    assert repo.current_pointer(NAME) == 1
    assert repo.resolve(NAME).number == 1  # type: ignore[union-attr]
    publish_one(repo, "c" * 64)
    assert repo.resolve(NAME).number == 1, "a pin keeps serving exactly its version"  # type: ignore[union-attr]

    with pytest.raises(VersionNotFoundError):
        repo.promote(NAME, 9)
    assert repo.current_pointer(NAME) == 1, "a failed promote leaves the pointer alone"

    repo.unpin(NAME)
    assert repo.resolve(NAME).number == 3  # type: ignore[union-attr]


def test_find_by_export_hash(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    publish_one(repo, "a" * 64)
    publish_one(repo, "b" * 64)
    found = repo.find_by_export_hash(NAME, "b" * 64)
    assert found is not None and found.number == 2
    assert repo.find_by_export_hash(NAME, "f" * 64) is None


def test_publish_same_hash_reuses_existing_version(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    assert publish_one(repo, "a" * 64) == 1
    assert publish_one(repo, "a" * 64, payload=b"different bytes") == 1
    assert [v.number for v in repo.versions(NAME)] == [1]
    assert [p.name for p in (tmp_path / NAME).iterdir() if p.name.startswith(".staging")] == []


def test_prune_keeps_newest_and_never_the_current(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    for i in range(5):
        publish_one(repo, str(i) * 64)
    repo.promote(NAME, 1)
    deleted = repo.prune(NAME, keep=2)
    assert deleted == [2, 3]
    assert [v.number for v in repo.versions(NAME)] == [1, 4, 5]
    assert not (tmp_path / NAME / "2").exists()
    assert [p for p in (tmp_path / NAME).iterdir() if p.name.startswith(".deleting")] == []
    with pytest.raises(RepositoryError):
        repo.prune(NAME, keep=0)
    # Numbers are never reused after pruning.
    assert publish_one(repo, "z" * 64) == 6


def test_prune_never_deletes_a_protected_version(tmp_path: Path) -> None:
    """A pinned version whose promotion has not happened yet survives an export's retention."""
    repo = ModelRepository(tmp_path)
    for i in range(4):
        publish_one(repo, str(i) * 64)
    repo.promote(NAME, 4)
    assert repo.prune(NAME, keep=1, protect=[2]) == [1, 3]
    assert [v.number for v in repo.versions(NAME)] == [2, 4]


def test_verify_detects_modified_missing_and_extra_files(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    publish_one(repo, "a" * 64)
    repo.verify(NAME, 1)
    version_dir = tmp_path / NAME / "1"

    (version_dir / "model.bin").write_bytes(b"weightz")
    with pytest.raises(ChecksumMismatchError, match=r"model\.bin"):
        repo.verify(NAME, 1)
    (version_dir / "model.bin").write_bytes(b"weights")
    repo.verify(NAME, 1)

    (version_dir / "stray.txt").write_text("x")
    with pytest.raises(ChecksumMismatchError, match=r"stray\.txt"):
        repo.verify(NAME, 1)
    (version_dir / "stray.txt").unlink()

    (version_dir / "model.xml").unlink()
    with pytest.raises(ChecksumMismatchError, match=r"model\.xml is missing"):
        repo.verify(NAME, 1)


def test_served_names_with_slashes_and_invalid_names(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    publish_one(repo, "a" * 64)
    other = "plain-model"
    with repo.staging(other) as staging:
        (staging / "model.bin").write_bytes(b"x")
        repo.publish(other, staging, make_manifest())
    assert repo.served_names() == [NAME, other]
    for bad in ["", "../escape", "a//b", "/abs", "a/.hidden", "a/3", "a/current"]:
        with pytest.raises(RepositoryError):
            repo.versions(bad)


def test_invalid_current_pointer_is_reported(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    publish_one(repo, "a" * 64)
    (tmp_path / NAME / "current").write_text('{"version": "one"}')
    with pytest.raises(RepositoryError, match="current"):
        repo.current_pointer(NAME)
    (tmp_path / NAME / "current").write_text('{"version": 7}')
    assert repo.resolve(NAME) is None, "a pin to a version that is not complete serves nothing"


def _publish_in_process(root: str, export_hash: str, barrier_dir: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    repo = ModelRepository(Path(root))
    with repo.staging(NAME) as staging:
        (staging / "model.bin").write_bytes(os.urandom(1 << 16))
        (staging / "model.xml").write_bytes(b"<net/>")
        # Rendezvous so both processes publish at the same moment.
        Path(barrier_dir, str(os.getpid())).touch()
        while len(list(Path(barrier_dir).iterdir())) < 2:
            time.sleep(0.001)
        queue.put(repo.publish(NAME, staging, make_manifest(export_hash)).number)


def _race(tmp_path: Path, hashes: list[str]) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    root = tmp_path / "repo"
    procs = [
        ctx.Process(target=_publish_in_process, args=(str(root), h, str(barrier), queue)) for h in hashes
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return sorted(queue.get(timeout=5) for _ in procs)


def test_concurrent_publish_of_same_export_hash_yields_one_version(tmp_path: Path) -> None:
    numbers = _race(tmp_path, ["a" * 64, "a" * 64])
    repo = ModelRepository(tmp_path / "repo")
    assert numbers == [1, 1]
    assert [v.number for v in repo.versions(NAME)] == [1]
    repo.verify(NAME, 1)
    assert [p for p in (tmp_path / "repo" / NAME).iterdir() if p.name.startswith(".staging")] == []


def test_concurrent_publish_of_different_hashes_yields_distinct_versions(tmp_path: Path) -> None:
    numbers = _race(tmp_path, ["a" * 64, "b" * 64])
    repo = ModelRepository(tmp_path / "repo")
    assert numbers == [1, 2]
    for version in repo.versions(NAME):
        repo.verify(NAME, version.number)
    assert {v.manifest.export_hash for v in repo.versions(NAME)} == {"a" * 64, "b" * 64}


def test_stale_staging_of_a_killed_process_is_cleaned_live_one_is_kept(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from rerank_runtime.repository import ModelRepository
        with ModelRepository(Path({str(tmp_path)!r})).staging({NAME!r}) as staging:
            (staging / "model.bin").write_bytes(b"partial")
            print(staging, flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        staging = Path(proc.stdout.readline().strip())
        assert staging.is_dir()
        with repo.staging(NAME) as own_staging:
            assert repo.clean_stale_staging(NAME) == 0, "live exports are left alone"
            assert staging.is_dir() and own_staging.is_dir()
            proc.send_signal(signal.SIGKILL)  # like an OOM-killed export Job: no cleanup runs
            proc.wait(timeout=10)
            assert staging.is_dir()
            assert repo.clean_stale_staging(NAME) == 1
            assert not staging.exists()
            assert own_staging.is_dir()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert repo.versions(NAME) == []
