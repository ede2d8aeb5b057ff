"""The official cohere SDK (v1 `Client` and `ClientV2`) against the real server, scores checked against HF."""

from __future__ import annotations

from pathlib import Path

import cohere
import numpy as np
import pytest
from pydantic import SecretStr

from tests.rerank_runtime.server.conftest import API_KEY, HfScorer, server_settings
from tests.rerank_runtime.server.live_server import LiveServer, live_server

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital and most populous city of France.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Bananas are rich in potassium.",
    "France is a country in Western Europe; its capital is Paris.",
    "The stock market closed higher today.",
]


def _check_ranking(results: list[object], expected: np.ndarray, top_n: int) -> None:
    scores = [r.relevance_score for r in results]  # type: ignore[attr-defined]
    indices = [r.index for r in results]  # type: ignore[attr-defined]
    assert len(results) == top_n
    assert scores == sorted(scores, reverse=True)
    assert indices == list(np.argsort(-expected, kind="stable")[:top_n])
    largest = max(abs(score - expected[index]) for index, score in zip(indices, scores, strict=True))
    print(f"\nprecision f32: largest |score - HF score| = {largest:.2e}")
    assert largest < 1e-4


@pytest.mark.parametrize("base_suffix", ["", "/v3"])
def test_cohere_v1_client(
    f32_server: LiveServer, minilm_repository: tuple[Path, str], hf_scores: HfScorer, base_suffix: str
) -> None:
    """`cohere.Client.rerank` gets sorted results, top_n and documents; scores equal HF's within 1e-4."""
    name = minilm_repository[1]
    client = cohere.Client(api_key=API_KEY, base_url=f32_server.base_url + base_suffix)
    response = client.rerank(model=name, query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True)
    _check_ranking(response.results, hf_scores(QUERY, DOCUMENTS), 3)
    for result in response.results:
        assert result.document is not None
        assert result.document.text == DOCUMENTS[result.index]
    assert response.meta is not None and response.meta.api_version is not None
    assert response.meta.api_version.version == "1"

    without_docs = client.rerank(model=name, query=QUERY, documents=DOCUMENTS)
    assert len(without_docs.results) == len(DOCUMENTS)
    assert all(result.document is None for result in without_docs.results)


@pytest.mark.parametrize("base_suffix", ["", "/v3"])
def test_cohere_v2_client(
    f32_server: LiveServer, minilm_repository: tuple[Path, str], hf_scores: HfScorer, base_suffix: str
) -> None:
    """`cohere.ClientV2.rerank` (what LangChain uses) gets the same ranking; explicit nulls are accepted."""
    name = minilm_repository[1]
    client = cohere.ClientV2(api_key=API_KEY, base_url=f32_server.base_url + base_suffix)
    response = client.rerank(
        model=name,
        query=QUERY,
        documents=DOCUMENTS,
        top_n=4,
        max_tokens_per_doc=None,
        request_options={"additional_body_parameters": {"return_documents": True}},
    )
    _check_ranking(response.results, hf_scores(QUERY, DOCUMENTS), 4)
    for result in response.results:
        assert result.document is not None
        assert result.document == {"text": DOCUMENTS[result.index]}


def test_object_documents_with_rank_fields(
    f32_server: LiveServer, minilm_repository: tuple[Path, str]
) -> None:
    """v1 object documents: `rank_fields` picks and orders the fields scored; the whole object is echoed."""
    client = cohere.Client(api_key=API_KEY, base_url=f32_server.base_url)
    name = minilm_repository[1]
    documents = [
        {"title": "Germany", "text": "Berlin is the capital of Germany.", "id": "de"},
        {"title": "France", "text": "Paris is the capital of France.", "id": "fr"},
    ]
    response = client.rerank(
        model=name, query=QUERY, documents=documents, rank_fields=["title", "text"], return_documents=True
    )
    as_text = [f"title: {d['title']}\ntext: {d['text']}" for d in documents]
    reference = client.rerank(model=name, query=QUERY, documents=as_text)
    assert {r.index: r.relevance_score for r in response.results} == pytest.approx(
        {r.index: r.relevance_score for r in reference.results}, abs=1e-9
    )
    for result in response.results:
        assert result.document is not None
        assert result.document.dict() == documents[result.index]
    # Without rank_fields an object's `text` field is what gets scored.
    default = client.rerank(model=name, query=QUERY, documents=documents)
    plain = client.rerank(model=name, query=QUERY, documents=[d["text"] for d in documents])
    assert {r.index: r.relevance_score for r in default.results} == pytest.approx(
        {r.index: r.relevance_score for r in plain.results}, abs=1e-9
    )


def test_auto_precision_difference(minilm_repository: tuple[Path, str], hf_scores: HfScorer) -> None:
    """`--precision auto` (bf16 on this CPU) stays close to HF; the largest difference is printed."""
    root, name = minilm_repository
    documents = [*DOCUMENTS, "Lyon is a large city in France.", "Paris Hilton is a media personality."]
    with live_server(server_settings(root, models=[name], precision="auto")) as server:
        client = cohere.ClientV2(api_key=API_KEY, base_url=server.base_url)
        response = client.rerank(model=name, query=QUERY, documents=documents)
        precision = server.service.get_model(name).current.runner.inference_precision  # type: ignore[union-attr]
    expected = hf_scores(QUERY, documents)
    largest = max(abs(r.relevance_score - expected[r.index]) for r in response.results)
    print(f"\nprecision auto ({precision}): largest |score - HF score| = {largest:.6f}")
    assert largest < 0.05


def test_langchain_cohere_rerank(f32_server: LiveServer, minilm_repository: tuple[Path, str]) -> None:
    """LangChain's CohereRerank (ClientV2, top_n=3, explicit nulls) compresses documents by server score."""
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(
        cohere_api_key=SecretStr(API_KEY), base_url=f32_server.base_url, model=minilm_repository[1], top_n=3
    )
    documents = [Document(page_content=text) for text in DOCUMENTS]
    ranked = reranker.rerank(documents, QUERY)
    assert len(ranked) == 3
    scores = [item["relevance_score"] for item in ranked]
    assert scores == sorted(scores, reverse=True)
    compressed = reranker.compress_documents(documents, QUERY)
    assert [doc.page_content for doc in compressed] == [DOCUMENTS[item["index"]] for item in ranked]
