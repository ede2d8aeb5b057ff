"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openvino as ov
import pytest

from rerank_runtime.engine.chunking import PairTemplate
from rerank_runtime.engine.tokenizer import TextTokenizer
from rerank_runtime.repository import ModelRepository, ModelVersion
from tests.support.model_fixtures import build_cached_export, build_cached_xlmr

XLMR_SERVED_NAME = "BAAI/bge-reranker-test"


@pytest.fixture(scope="session")
def xlmr_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`(root, name)`: repository whose version 1 is the fp32 export of the 2-layer XLM-R cross-encoder."""
    cached = build_cached_export("xlmr", build_cached_xlmr(), XLMR_SERVED_NAME, "fp32")
    dest = tmp_path_factory.mktemp("xlmr-repo") / "repo"
    shutil.copytree(cached, dest)
    return dest, XLMR_SERVED_NAME


@dataclass(frozen=True)
class TokenizerCase:
    """An exported version's text tokenizer and pair template beside the Hugging Face tokenizer."""

    kind: str
    text_tokenizer: TextTokenizer
    template: PairTemplate
    hf_tokenizer: Any
    version: ModelVersion


def _case(kind: str, root: Path, name: str, hf_dir: Path) -> TokenizerCase:
    from transformers import AutoTokenizer

    version = ModelRepository(root).get(name, 1)
    info = version.manifest.tokenizer
    template = PairTemplate(
        kind=info.kind,
        cls_token_id=info.cls_token_id,
        sep_token_id=info.sep_token_id,
        pad_token_id=info.pad_token_id,
        max_length=version.manifest.max_length,
    )
    tokenizer = TextTokenizer(ov.Core(), version.path / "text_tokenizer.xml")
    return TokenizerCase(kind, tokenizer, template, AutoTokenizer.from_pretrained(str(hf_dir)), version)


@pytest.fixture(scope="session", params=["bert", "roberta"])
def tokenizer_case(
    request: pytest.FixtureRequest,
    minilm_repository: tuple[Path, str],
    minilm_hf_dir: Path,
    xlmr_repository: tuple[Path, str],
    xlmr_hf_dir: Path,
) -> TokenizerCase:
    """Both tokenizer families: MiniLM (bert) and XLM-R (roberta)."""
    if request.param == "bert":
        return _case("bert", *minilm_repository, minilm_hf_dir)
    return _case("roberta", *xlmr_repository, xlmr_hf_dir)
