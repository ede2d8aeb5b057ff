"""The models `make bench` measures, built locally (no hub) and cached under ~/.cache/rerank-operator.

- `minilm`: cross-encoder/ms-marco-MiniLM-L-6-v2's shape with the real all-MiniLM-L6-v2 encoder (22.7M);
- `xlmr-base`: bge-reranker-base's shape (XLM-R base: 12 layers, hidden 768, 250,002-row vocabulary, 278M);
- `xlmr-large`: bge-reranker-large's shape (XLM-R large: 24 layers, hidden 1024, 560M).

The XLM-R models have seeded random weights and a generated tokenizer: right for speed and memory, meaningless
for ranking quality. Each model is exported to an OpenVINO repository per weight format with the project's own
exporter. Building is deterministic, so results are kept across runs, keyed by builder and exporter sources
and the library versions, and built once under a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

_RUNTIME = Path(__file__).resolve().parents[1]
_LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "openvino",
    "openvino-tokenizers",
    "nncf",
)


@dataclass(frozen=True)
class ModelShape:
    """One benchmarked model: how to build its Hugging Face folder and what it stands for."""

    key: str
    served_name: str
    description: str
    layers: int = 0
    hidden: int = 0
    heads: int = 0

    @property
    def generated(self) -> bool:
        """True for seeded random weights (XLM-R shapes)."""
        return self.key != "minilm"


MINILM = ModelShape(
    "minilm",
    "cross-encoder/ms-marco-MiniLM-L-6-v2",
    "MiniLM-L6 cross-encoder (ms-marco-MiniLM-L-6-v2 shape, real all-MiniLM-L6-v2 encoder), 22.7M params",
)
XLMR_BASE = ModelShape(
    "xlmr-base",
    "BAAI/bge-reranker-base",
    "XLM-R base shape (bge-reranker-base: 12 layers, hidden 768, vocabulary 250,002), 278M params, "
    "seeded random weights",
    layers=12,
    hidden=768,
    heads=12,
)
XLMR_LARGE = ModelShape(
    "xlmr-large",
    "BAAI/bge-reranker-large",
    "XLM-R large shape (bge-reranker-large: 24 layers, hidden 1024, vocabulary 250,002), 560M params, "
    "seeded random weights",
    layers=24,
    hidden=1024,
    heads=16,
)
SHAPES = {shape.key: shape for shape in (MINILM, XLMR_BASE, XLMR_LARGE)}
XLMR_VOCABULARY = 250_002


def cache_root() -> Path:
    """Where bench models are kept (RERANK_BENCH_CACHE overrides)."""
    override = os.environ.get("RERANK_BENCH_CACHE")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "rerank-operator" / "bench-models"


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


def _cached(name: str, build: Callable[[Path], object]) -> Path:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
            try:
                build(tmp / "out")
                (tmp / "out").rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def hf_dir(shape: ModelShape) -> Path:
    """The Hugging Face folder of `shape` (built once)."""
    from rerank_runtime.exporter import testmodels

    key = _fingerprint(_RUNTIME / "exporter" / "testmodels.py")
    if shape.key == "minilm":
        return _cached(f"minilm-hf-{key}", testmodels.build_minilm_cross_encoder)
    return _cached(
        f"{shape.key}-hf-{key}",
        lambda dest: testmodels.build_xlmr_cross_encoder(
            dest,
            layers=shape.layers,
            hidden_size=shape.hidden,
            attention_heads=shape.heads,
            vocab_size=XLMR_VOCABULARY,
        ),
    )


def repository(shape: ModelShape, weight_format: str) -> Path:
    """A repository root whose version 1 of `shape.served_name` is the `weight_format` export (built once)."""
    from rerank_runtime.exporter.export import ExportSpec, run_export

    source = hf_dir(shape)
    # What decides the IR: the builder, the conversion code and the layout (not the CLI around them).
    key = _fingerprint(
        _RUNTIME / "exporter" / "testmodels.py",
        _RUNTIME / "exporter" / "conversion.py",
        _RUNTIME / "repository.py",
    )

    def build(dest: Path) -> None:
        run_export(
            ExportSpec(
                source=str(source),
                repository=dest,
                name=shape.served_name,
                weight_format=weight_format,  # type: ignore[arg-type]
            )
        )

    return _cached(f"{shape.key}-repo-{weight_format}-{key}", build)
