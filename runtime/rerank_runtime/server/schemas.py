"""Wire formats: the rerank request (union of Cohere v1/v2 and TEI fields) and the responses.

Every optional field accepts `null` because the official SDK and LangChain send explicit nulls. Types are
strict (`"5"` is not a number) so a wrong type is a 422, not a silent guess.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from rerank_runtime.engine.errors import InvalidRequestError, PayloadTooLargeError
from rerank_runtime.engine.serving import RerankQuery

DocumentItem = StrictStr | dict[str, Any]


class RerankRequest(BaseModel):
    """Body of every rerank route. Unknown fields are ignored so newer clients keep working."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "BAAI/bge-reranker-base", "query": "welcome", "documents": ["hi", "bye"]}]
        },
    )

    model: StrictStr | None = Field(
        default=None, description="Served model name; optional when one is served"
    )
    query: StrictStr | None = Field(default=None, description="The search query")
    documents: list[DocumentItem] | None = Field(
        default=None, description="Strings, or objects with `text` and other fields (see `rank_fields`)"
    )
    texts: list[StrictStr] | None = Field(
        default=None, description="TEI: documents as strings (TEI response)"
    )
    top_n: StrictInt | None = Field(default=None, description="Return only the best N results")
    rank_fields: list[StrictStr] | None = Field(
        default=None, description="Object documents: fields to score, in order (default: `text`, else all)"
    )
    return_documents: StrictBool | None = Field(default=None, description="Echo each document in its result")
    max_chunks_per_doc: StrictInt | None = Field(default=None, description="Windows scored per long document")
    max_tokens_per_doc: StrictInt | None = Field(default=None, description="Tokens kept per document")
    raw_scores: StrictBool | None = Field(default=None, description="Logits instead of sigmoid scores")
    priority: StrictInt | None = Field(default=None, description="Accepted for Cohere v2; not used")
    return_text: StrictBool | None = Field(default=None, description="TEI: echo the text in each result")
    truncate: StrictBool | None = Field(default=None, description="TEI: accepted; long texts are chunked")
    truncation_direction: StrictStr | None = Field(default=None, description="TEI: accepted; not used")

    @property
    def is_tei(self) -> bool:
        """A body with `texts` and no `documents` is a Text Embeddings Inference request."""
        return self.texts is not None and self.documents is None


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def document_text(document: DocumentItem, rank_fields: list[str] | None, index: int) -> str:
    """The text scored for one document: a string as is; an object's rank fields as `field: value` lines."""
    if isinstance(document, str):
        return document
    if rank_fields:
        fields = rank_fields
    elif "text" in document:
        fields = ["text"]
    else:
        fields = list(document)
    if not fields:
        raise InvalidRequestError(f"documents[{index}] is an empty object")
    missing = [name for name in fields if name not in document]
    if missing:
        raise InvalidRequestError(f"documents[{index}] has no field {missing[0]!r}")
    if fields == ["text"]:
        return _field_text(document["text"])
    return "\n".join(f"{name}: {_field_text(document[name])}" for name in fields)


def to_query(request: RerankRequest, max_documents: int) -> tuple[RerankQuery, list[DocumentItem]]:
    """Check the request's meaning (400/413); return the engine's query and the original documents."""
    if request.documents is not None and request.texts is not None:
        raise InvalidRequestError("send either 'documents' or 'texts', not both")
    documents: list[DocumentItem] | None = request.documents if request.documents is not None else None
    if documents is None and request.texts is not None:
        documents = list(request.texts)
    if request.query is None:
        raise InvalidRequestError("'query' is required")
    if not request.query.strip():
        raise InvalidRequestError("'query' must not be empty")
    if documents is None:
        raise InvalidRequestError("'documents' is required")
    if not documents:
        raise InvalidRequestError("'documents' must contain at least one document")
    if len(documents) > max_documents:
        raise PayloadTooLargeError(f"{len(documents)} documents in one request; the limit is {max_documents}")
    for name in ("top_n", "max_chunks_per_doc", "max_tokens_per_doc"):
        value = getattr(request, name)
        if value is not None and value < 1:
            raise InvalidRequestError(f"'{name}' must be at least 1, got {value}")
    if request.model is not None and not request.model.strip():
        raise InvalidRequestError("'model' must not be empty")
    texts = [document_text(doc, request.rank_fields, i) for i, doc in enumerate(documents)]
    query = RerankQuery(
        model=request.model,
        query=request.query,
        documents=texts,
        top_n=request.top_n,
        max_chunks_per_doc=request.max_chunks_per_doc,
        max_tokens_per_doc=request.max_tokens_per_doc,
        raw_scores=bool(request.raw_scores),
    )
    return query, documents


class ApiVersion(BaseModel):
    """Cohere's `meta.api_version`."""

    version: str


class BilledUnits(BaseModel):
    """Cohere's `meta.billed_units`: one search unit per query with up to 100 document windows."""

    search_units: int


class Tokens(BaseModel):
    """Cohere's `meta.tokens`."""

    input_tokens: int
    output_tokens: int = 0


class Meta(BaseModel):
    """Cohere's response `meta`."""

    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens
    warnings: list[str] | None = None


class RerankResult(BaseModel):
    """One ranked document."""

    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class RerankResponse(BaseModel):
    """Cohere v1/v2 rerank response."""

    id: str
    results: list[RerankResult]
    meta: Meta


class TeiRank(BaseModel):
    """One element of TEI's bare-array response."""

    index: int
    score: float
    text: str | None = None


class ErrorBody(BaseModel):
    """Every error response: Cohere's `{id, message}`."""

    id: str
    message: str


class VersionInfo(BaseModel):
    """One version in `/v2/models/{name}`."""

    version: int
    state: str
    error: str | None = None


class ModelMetadata(BaseModel):
    """`GET /v2/models/{name}`."""

    name: str
    platform: str = "openvino"
    served_version: int | None
    versions: list[VersionInfo]
    last_load_error: str | None
    max_length: int | None = None
    weight_format: str | None = None
    source: str | None = None
    inference_precision: str | None = None


class ModelCard(BaseModel):
    """One entry of `/v1/models`."""

    id: str
    object: str = "model"
    owned_by: str = "rerank-operator"
    version: int | None = None
    ready: bool


class ModelList(BaseModel):
    """`GET /v1/models` (OpenAI-style list)."""

    object: str = "list"
    data: list[ModelCard]
