"""Long documents are never rejected: they are scored window by window and the best window counts."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.rerank_runtime.server.conftest import API_KEY
from tests.rerank_runtime.server.live_server import LiveServer

QUERY = "Where is the Eiffel Tower?"
FILLER = " ".join(["The quarterly report discusses revenue, costs and the outlook for next year."] * 45)
RELEVANT = "The Eiffel Tower is located on the Champ de Mars in Paris, France."
DOCUMENT = f"{FILLER} {RELEVANT}"


@pytest.fixture(scope="module")
def window_scores(minilm_hf_dir: Path) -> list[float]:
    """Hugging Face scores of each window the documented rule gives (query + consecutive document slices)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_hf_dir)).eval()
    query = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    document = tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]
    window = 512 - 3 - len(query)
    assert len(document) > window, "the document must not fit one window"
    scores = []
    for start in range(0, len(document), window):
        piece = document[start : start + window]
        ids = [tokenizer.cls_token_id, *query, tokenizer.sep_token_id, *piece, tokenizer.sep_token_id]
        types = [0] * (len(query) + 2) + [1] * (len(piece) + 1)
        with torch.no_grad():
            logit = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0, 0]
        scores.append(float(1.0 / (1.0 + np.exp(-float(logit)))))
    return scores


def _score(server: LiveServer, **extra: object) -> tuple[float, dict[str, object]]:
    response = httpx.post(
        f"{server.base_url}/v1/rerank",
        json={"query": QUERY, "documents": [DOCUMENT], **extra},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body["results"][0]["relevance_score"], body["meta"]


def test_long_document_scores_as_its_best_window(f32_server: LiveServer, window_scores: list[float]) -> None:
    """The passage beyond the first 512 tokens is found: score = max over windows (HF within 1e-4)."""
    assert len(window_scores) >= 2
    assert window_scores[-1] > window_scores[0], "the relevant passage sits in the last window"
    score, meta = _score(f32_server)
    assert score == pytest.approx(max(window_scores), abs=1e-4)
    assert meta["tokens"]["input_tokens"] > 512  # type: ignore[index]


def test_max_chunks_per_doc_limits_the_windows(f32_server: LiveServer, window_scores: list[float]) -> None:
    """With `max_chunks_per_doc=1` only the first window is scored (the relevant passage is missed)."""
    score, _ = _score(f32_server, max_chunks_per_doc=1)
    assert score == pytest.approx(window_scores[0], abs=1e-4)


def test_raw_scores_are_logits(f32_server: LiveServer, window_scores: list[float]) -> None:
    """`raw_scores` returns the logit whose sigmoid is the relevance score."""
    logit, _ = _score(f32_server, raw_scores=True)
    assert 1.0 / (1.0 + np.exp(-logit)) == pytest.approx(max(window_scores), abs=1e-4)
