"""The latency path (a second, LATENCY-hint compilation for small requests on an idle server) and the
compiled-model cache, on the real MiniLM export and real OpenVINO."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from rerank_runtime.engine.chunking import Row, RowBatch, pad_rows
from rerank_runtime.engine.errors import ModelLoadError
from rerank_runtime.engine.versions import EngineOptions, LoadedVersion, load_version
from rerank_runtime.repository import ModelRepository

QUERY = "what is the capital of france"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "The recipe needs two cups of flour and a pinch of salt.",
    "Berlin has a population of about 3.7 million registered inhabitants.",
]


def _load(root: Path, name: str, **options: object) -> LoadedVersion:
    version = ModelRepository(root).resolve(name)
    assert version is not None
    return LoadedVersion(version, EngineOptions(precision="f32", **options))  # type: ignore[arg-type]


def test_small_requests_score_the_same_alone_and_under_load(minilm_repository: tuple[Path, str]) -> None:
    """A request served alone (latency model) and the same request among many concurrent ones (batched on
    the throughput model) get the same scores."""
    root, name = minilm_repository
    loaded = _load(root, name)
    assert loaded.runner.has_latency_model

    async def scenario() -> tuple[np.ndarray, list[np.ndarray]]:
        loaded.activate(None)
        rows = loaded.build_rows(QUERY, DOCUMENTS, None, None).rows
        try:
            alone = await loaded.score(rows)
            crowd = await asyncio.gather(*(loaded.score(rows) for _ in range(12)))
        finally:
            await loaded.release()
        return alone, crowd

    alone, crowd = asyncio.run(scenario())
    assert alone[0, 0] > alone[1, 0]  # the capital of France above a recipe
    for logits in crowd:
        np.testing.assert_allclose(logits, alone, atol=1e-4)


def test_latency_path_can_be_turned_off(minilm_repository: tuple[Path, str]) -> None:
    """`latency_max_tokens=0` compiles one model only, and small requests still score the same."""
    root, name = minilm_repository
    with_path = _load(root, name)
    without = _load(root, name, latency_max_tokens=0)
    assert not without.runner.has_latency_model

    async def score(loaded: LoadedVersion) -> np.ndarray:
        loaded.activate(None)
        try:
            return await loaded.score(loaded.build_rows(QUERY, DOCUMENTS, None, None).rows)
        finally:
            await loaded.release()

    np.testing.assert_allclose(asyncio.run(score(without)), asyncio.run(score(with_path)), atol=1e-4)


def test_compiled_model_cache_is_filled_and_reused(
    minilm_repository: tuple[Path, str], tmp_path: Path
) -> None:
    """The first load writes compiled blobs into a per-version folder; a second load uses them and scores
    identically."""
    root, name = minilm_repository
    cache = tmp_path / "cache"
    first = _load(root, name, cache_dir=cache)
    blobs = sorted(cache.rglob("*.blob"))
    assert blobs, "the first load wrote no compiled blob"
    folders = {blob.parent for blob in blobs}
    assert len(folders) == 1 and next(iter(folders)).parent == cache
    stamps = {blob: blob.stat().st_mtime_ns for blob in blobs}
    second = _load(root, name, cache_dir=cache)
    assert {blob: blob.stat().st_mtime_ns for blob in sorted(cache.rglob("*.blob"))} == stamps

    rows = first.build_rows(QUERY, DOCUMENTS, None, None).rows
    np.testing.assert_allclose(
        second.runner.infer(_padded(second, rows)), first.runner.infer(_padded(first, rows)), atol=1e-5
    )
    first.runner.close()
    second.runner.close()


def test_unusable_cache_folder_still_loads(minilm_repository: tuple[Path, str], tmp_path: Path) -> None:
    """A cache path that cannot be a folder (here: a file) costs the cache, not the model."""
    root, name = minilm_repository
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    loaded = _load(root, name, cache_dir=blocker)
    rows = loaded.build_rows(QUERY, DOCUMENTS, None, None).rows
    assert loaded.runner.infer(_padded(loaded, rows)).shape == (len(DOCUMENTS), 1)
    loaded.runner.close()


def _padded(loaded: LoadedVersion, rows: list[Row]) -> RowBatch:
    return pad_rows(rows, loaded.template.pad_token_id, loaded.template.kind == "bert")


def test_cached_load_still_catches_a_changed_file(
    minilm_repository: tuple[Path, str], tmp_path: Path
) -> None:
    """With the cache, a version verified once loads without re-hashing; a file changed afterwards is still
    refused with a checksum error, not served."""
    source, name = minilm_repository
    root = tmp_path / "repo"
    shutil.copytree(source, root)
    repository = ModelRepository(root)
    version = repository.resolve(name)
    assert version is not None
    options = EngineOptions(precision="f32", cache_dir=tmp_path / "cache", latency_max_tokens=0)
    load_version(repository, version, options).runner.close()
    load_version(repository, version, options).runner.close()  # stamp matches: no re-hash, still loads

    weights = version.path / "model.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum"):
        load_version(repository, version, options)
