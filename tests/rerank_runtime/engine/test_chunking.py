"""Row assembly and long-document windows, checked against Hugging Face's own pair encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rerank_runtime.engine.chunking import pad_rows
from tests.rerank_runtime.engine.conftest import TokenizerCase

PAIRS = [
    ("welcome", "good morning"),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("héllo wörld, naïve café", "Ünïcödé àccents — dashes, «quotes» and emoji 🚀 in text."),
    ("search engine ranking", "我们的搜索引擎排序文档查询相关答案 and mixed English words"),
    ("a", ""),
    ("  leading and trailing spaces  ", "tabs\tand\nnewlines\nin the document"),
    ("numbers 12345 and 3.14159", "phone +1 (555) 010-9999, e-mail someone@example.com"),
]


@pytest.mark.parametrize(("query", "document"), PAIRS)
def test_rows_equal_hugging_face_pair_encoding(
    tokenizer_case: TokenizerCase, query: str, document: str
) -> None:
    """A pair that fits the context is one row, token for token what Hugging Face's tokenizer produces."""
    query_ids, doc_ids = tokenizer_case.text_tokenizer.encode([query, document])
    rows = tokenizer_case.template.rows(query_ids, doc_ids)
    assert len(rows) == 1
    # Batch form, as sentence-transformers' CrossEncoder calls it (it keeps an empty document as a segment).
    expected = tokenizer_case.hf_tokenizer([query], [document], return_token_type_ids=True)
    assert rows[0].input_ids.tolist() == expected["input_ids"][0]
    batch = pad_rows(rows, tokenizer_case.template.pad_token_id, tokenizer_case.kind == "bert")
    assert batch.token_type_ids[0].tolist() == expected["token_type_ids"][0]
    assert batch.attention_mask[0].tolist() == expected["attention_mask"][0]


def test_padded_batch_equals_hugging_face_padded_batch(tokenizer_case: TokenizerCase) -> None:
    """Several rows of different lengths pad exactly like the Hugging Face tokenizer pads a batch."""
    queries = [q for q, _ in PAIRS]
    documents = [d for _, d in PAIRS]
    ids = tokenizer_case.text_tokenizer.encode(queries + documents)
    rows = [tokenizer_case.template.rows(ids[i], ids[len(PAIRS) + i])[0] for i in range(len(PAIRS))]
    batch = pad_rows(rows, tokenizer_case.template.pad_token_id, tokenizer_case.kind == "bert")
    expected = tokenizer_case.hf_tokenizer(queries, documents, padding=True, return_token_type_ids=True)
    assert batch.input_ids.tolist() == expected["input_ids"]
    assert batch.attention_mask.tolist() == expected["attention_mask"]
    assert batch.token_type_ids.tolist() == expected["token_type_ids"]


def _long_text(words: int) -> str:
    vocabulary = [
        "river",
        "city",
        "model",
        "search",
        "ranking",
        "document",
        "query",
        "answer",
        "paris",
        "france",
        "engine",
        "test",
    ]
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words))


def test_long_document_becomes_windows_beside_the_query(tokenizer_case: TokenizerCase) -> None:
    """A document longer than the context is split into consecutive windows; nothing is lost or repeated."""
    template = tokenizer_case.template
    query_ids, doc_ids = tokenizer_case.text_tokenizer.encode(["what is the answer", _long_text(1500)])
    assert len(doc_ids) > 2 * template.max_length
    rows = template.rows(query_ids, doc_ids)
    window = template.max_length - template.special_tokens - len(query_ids)
    assert len(rows) == math.ceil(len(doc_ids) / window)
    assert all(len(row) <= template.max_length for row in rows)
    pieces = []
    for row in rows:
        ids = row.input_ids.tolist()
        if tokenizer_case.kind == "bert":
            assert ids[: len(query_ids) + 2] == [
                template.cls_token_id,
                *query_ids.tolist(),
                template.sep_token_id,
            ]
        else:
            head = [template.cls_token_id, *query_ids.tolist(), template.sep_token_id, template.sep_token_id]
            assert ids[: len(head)] == head
        assert ids[-1] == template.sep_token_id
        pieces += ids[row.second_segment_start : -1]
    assert pieces == doc_ids.tolist()


def test_long_query_keeps_at_most_half_the_context(tokenizer_case: TokenizerCase) -> None:
    """A query longer than half the context is cut so every window still has room for document text."""
    template = tokenizer_case.template
    query_ids, doc_ids = tokenizer_case.text_tokenizer.encode([_long_text(2000), _long_text(600)])
    rows = template.rows(query_ids, doc_ids)
    assert len(rows) > 1
    for row in rows:
        assert len(row) <= template.max_length
        kept_query = row.second_segment_start - (2 if tokenizer_case.kind == "bert" else 3)
        assert kept_query == template.query_budget <= template.max_length // 2


def test_max_chunks_and_max_tokens_limit_the_windows(tokenizer_case: TokenizerCase) -> None:
    """`max_chunks_per_doc` keeps the first windows; `max_tokens_per_doc` cuts the document first."""
    template = tokenizer_case.template
    query_ids, doc_ids = tokenizer_case.text_tokenizer.encode(["query", _long_text(3000)])
    all_rows = template.rows(query_ids, doc_ids)
    assert len(all_rows) > 3
    capped = template.rows(query_ids, doc_ids, max_chunks=2)
    assert [r.input_ids.tolist() for r in capped] == [r.input_ids.tolist() for r in all_rows[:2]]
    short = template.rows(query_ids, doc_ids, max_tokens=100)
    assert len(short) == 1
    assert short[0].input_ids[short[0].second_segment_start : -1].tolist() == doc_ids[:100].tolist()


def test_text_tokenizer_does_not_truncate(tokenizer_case: TokenizerCase) -> None:
    """The exported text tokenizer keeps every token of a long text (chunking needs all of them)."""
    text = _long_text(3000)
    (ids,) = tokenizer_case.text_tokenizer.encode([text])
    expected = tokenizer_case.hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.tolist() == expected
    assert np.all(ids >= 0)
