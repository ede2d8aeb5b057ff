"""Fixtures for the server tests: a real server on a free port and Hugging Face reference scores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from rerank_runtime.server.settings import Settings
from tests.rerank_runtime.server.live_server import LiveServer, live_server

API_KEY = "test-key"
HfScorer = Callable[[str, list[str]], np.ndarray]


def server_settings(root: Path, **overrides: object) -> Settings:
    """Settings for a test server on `root` (API key required, quick polling)."""
    values: dict[str, object] = {
        "repository": root,
        "api_key": SecretStr(API_KEY),
        "poll_interval": 0.5,
        "drain_timeout": 10.0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
def f32_server(minilm_repository: tuple[Path, str]) -> Iterator[LiveServer]:
    """The MiniLM fp32 export served with `--precision f32` (exact parity with Hugging Face)."""
    root, name = minilm_repository
    with live_server(server_settings(root, models=[name], precision="f32")) as server:
        yield server


@pytest.fixture(scope="session")
def hf_scores(minilm_hf_dir: Path) -> HfScorer:
    """Hugging Face transformers' reference: sigmoid of the cross-encoder logit, computed in float64."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_hf_dir)).eval()

    def score(query: str, documents: list[str]) -> np.ndarray:
        batch = tokenizer(
            [query] * len(documents), documents, padding=True, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(**batch).logits[:, 0].double().numpy()
        result: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return result

    return score
