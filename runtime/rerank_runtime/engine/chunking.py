"""Pair row assembly: query and document token ids become model input rows, long documents become windows.

The exported text tokenizer returns token ids WITHOUT special tokens, so this module owns the pair template:

- bert:    ``[CLS] q [SEP] d [SEP]`` with token_type_ids ``0 ... 0 1 ... 1`` (the second segment starts after
  the first ``[SEP]``), exactly what Hugging Face's pair encoding produces;
- roberta: ``<s> q </s></s> d </s>`` with no token type distinction (XLM-R, bge-reranker).

A pair that fits the context is encoded exactly like Hugging Face would encode it. A pair that does not fit is
never rejected: the query keeps at most half of the context and the document is cut into consecutive windows
that each fit beside the query; the caller scores every window and keeps the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

TokenIds = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Row:
    """One model input row: the ids with special tokens and where the second segment begins."""

    input_ids: TokenIds
    second_segment_start: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class PairTemplate:
    """How a tokenizer family joins a query and a document into one row of at most `max_length` tokens."""

    kind: Literal["bert", "roberta"]
    cls_token_id: int
    sep_token_id: int
    pad_token_id: int
    max_length: int

    def __post_init__(self) -> None:
        # A row must hold the special tokens, at least one query token and one document token.
        if self.max_length < self.special_tokens + 2:
            raise ValueError(f"max_length {self.max_length} is too small for a {self.kind} pair")

    @property
    def special_tokens(self) -> int:
        """Number of special tokens a pair row carries (bert 3, roberta 4)."""
        return 3 if self.kind == "bert" else 4

    @property
    def query_budget(self) -> int:
        """Most query tokens kept when a pair does not fit: half of the usable context."""
        return (self.max_length - self.special_tokens) // 2

    def _row(self, query_ids: TokenIds, doc_ids: TokenIds) -> Row:
        cls = np.array([self.cls_token_id], dtype=np.int64)
        sep = np.array([self.sep_token_id], dtype=np.int64)
        if self.kind == "bert":
            ids = np.concatenate([cls, query_ids, sep, doc_ids, sep])
            return Row(ids, second_segment_start=len(query_ids) + 2)
        ids = np.concatenate([cls, query_ids, sep, sep, doc_ids, sep])
        return Row(ids, second_segment_start=len(query_ids) + 3)

    def rows(
        self,
        query_ids: TokenIds,
        doc_ids: TokenIds,
        *,
        max_chunks: int | None = None,
        max_tokens: int | None = None,
    ) -> list[Row]:
        """Rows for one (query, document) pair.

        `max_tokens` cuts the document to its first `max_tokens` tokens before windowing; `max_chunks` keeps
        only the first `max_chunks` windows. A document that fits beside the whole query gives one row equal
        to Hugging Face's pair encoding.
        """
        if max_tokens is not None:
            doc_ids = doc_ids[:max_tokens]
        if len(query_ids) + len(doc_ids) + self.special_tokens <= self.max_length:
            return [self._row(query_ids, doc_ids)]
        query_ids = query_ids[: self.query_budget]
        window = self.max_length - self.special_tokens - len(query_ids)
        starts = range(0, len(doc_ids), window)
        if max_chunks is not None:
            starts = starts[:max_chunks]
        return [self._row(query_ids, doc_ids[start : start + window]) for start in starts]


@dataclass(frozen=True)
class RowBatch:
    """Padded model inputs for a list of rows (right padding, like Hugging Face)."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    token_type_ids: npt.NDArray[np.int64]

    @property
    def padded_tokens(self) -> int:
        """Tokens the model processes for this batch, padding included."""
        return int(self.input_ids.size)


def pad_rows(rows: list[Row], pad_token_id: int, bert_segments: bool) -> RowBatch:
    """Stack rows into right-padded arrays; token_type_ids mark the document segment for bert rows only."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row)
        input_ids[i, :n] = row.input_ids
        attention_mask[i, :n] = 1
        if bert_segments:
            token_type_ids[i, row.second_segment_start : n] = 1
    return RowBatch(input_ids, attention_mask, token_type_ids)
