"""Wire formats: the rerank request (union of Cohere v1/v2 and TEI fields) and the responses.

Every optional field accepts `null` because the official SDK and LangChain send explicit nulls. Types are
strict (`"5"` is not a number) so a wrong type is a 422, not a silent guess.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from rerank_runtime.engine.errors import InvalidRequestError, PayloadTooLargeError
from rerank_runtime.engine.serving import RerankQuery

# An object document needs at least one field to score.
DocumentItem = StrictStr | Annotated[dict[str, Any], Field(min_length=1)]


def _integral(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer; strings and fractions stay errors.
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]
# Integers that must be positive; the upper bound only keeps values within what JSON clients exchange safely.
# (The bounds come before the validator so that they reach the JSON schema as minimum/maximum.)
PositiveInt = Annotated[StrictInt, Field(ge=1, le=2**31 - 1), BeforeValidator(_integral)]
# Text with at least one character that is not whitespace.
_NOT_BLANK = r"\S"


def not_null(schema: dict[str, Any]) -> None:
    """Schema of a field that may be left out but not sent as null: drop the null variant."""
    variants = schema.pop("anyOf", None)
    if variants:
        schema.update(next(v for v in variants if v.get("type") != "null"))


class RerankRequest(BaseModel):
    """Body of every rerank route. Unknown fields are ignored so newer clients keep working.

    Exactly one of `documents` (Cohere) and `texts` (TEI) must be present; optional fields accept `null`
    (the Cohere SDK sends explicit nulls), the two lists do not.
    """

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"oneOf": [{"required": ["documents"]}, {"required": ["texts"]}]},
    )

    model: Annotated[StrictStr, Field(pattern=_NOT_BLANK)] | None = Field(
        default=None, description="Served model name; optional when one model is served"
    )
    query: StrictStr = Field(pattern=_NOT_BLANK, description="The search query (not blank)")
    documents: list[DocumentItem] | None = Field(
        default=None,
        min_length=1,
        description="Strings, or objects with `text` and other fields (see `rank_fields`)",
        json_schema_extra=not_null,
    )
    texts: list[StrictStr] | None = Field(
        default=None,
        min_length=1,
        description="TEI: documents as strings (TEI response)",
        json_schema_extra=not_null,
    )
    top_n: PositiveInt | None = Field(default=None, description="Return only the best N results")
    rank_fields: list[StrictStr] | None = Field(
        default=None, description="Object documents: fields to score, in order (default: `text`, else all)"
    )
    return_documents: StrictBool | None = Field(default=None, description="Echo each document in its result")
    max_chunks_per_doc: PositiveInt | None = Field(
        default=None, description="Windows scored per long document"
    )
    max_tokens_per_doc: PositiveInt | None = Field(default=None, description="Tokens kept per document")
    raw_scores: StrictBool | None = Field(default=None, description="Logits instead of sigmoid scores")
    priority: JsonInt | None = Field(default=None, description="Accepted for Cohere v2; not used")
    return_text: StrictBool | None = Field(default=None, description="TEI: echo the text in each result")
    truncate: StrictBool | None = Field(default=None, description="TEI: accepted; long texts are chunked")
    truncation_direction: StrictStr | None = Field(default=None, description="TEI: accepted; not used")

    @field_validator("documents", "texts", mode="before")
    @classmethod
    def _no_null_list(cls, value: Any) -> Any:
        # Runs only for values present in the body: the schema says an array, so an explicit null is wrong.
        if value is None:
            raise ValueError("must be an array (leave the field out instead of null)")
        return value

    @property
    def is_tei(self) -> bool:
        """A body with `texts` and no `documents` is a Text Embeddings Inference request."""
        return self.texts is not None and self.documents is None


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _lone_surrogate(text: str) -> int | None:
    """Index of the first lone UTF-16 surrogate in `text` (JSON `\ud800` escapes decode to these)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_unicode(value: Any, where: str) -> None:
    """400 for any string in `value` that is not valid Unicode (it could not be tokenized or echoed)."""
    if isinstance(value, str):
        position = _lone_surrogate(value)
        if position is not None:
            raise InvalidRequestError(
                f"{where} is not valid Unicode: lone surrogate U+{ord(value[position]):04X} at character "
                f"{position}; send text as UTF-8 (or JSON escapes of complete surrogate pairs)"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, f"{where} (a field name)")
            _check_unicode(item, f"{where}.{key}" if _lone_surrogate(key) is None else where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_unicode(item, f"{where}[{index}]")


def document_text(document: DocumentItem, rank_fields: list[str] | None, index: int, field: str) -> str:
    """The text scored for one document: a string as is; an object's rank fields as `field: value` lines."""
    if isinstance(document, str):
        return document
    if rank_fields:
        fields = rank_fields
    elif "text" in document:
        fields = ["text"]
    else:
        fields = list(document)
    missing = [name for name in fields if name not in document]
    if missing:
        raise InvalidRequestError(f"{field}[{index}] has no field {missing[0]!r}")
    if fields == ["text"]:
        return _field_text(document["text"])
    return "\n".join(f"{name}: {_field_text(document[name])}" for name in fields)


def to_query(
    request: RerankRequest, max_documents: int, deadline: float | None = None, strict_deadline: bool = False
) -> tuple[RerankQuery, list[DocumentItem]]:
    """Check the request's meaning (400/413); return the engine's query and the original documents.

    Messages name the fields the client sent (`texts` for TEI bodies). Text is validated, not repaired:
    a lone surrogate is a 400 that names the field, never a silently changed score.
    """
    if request.documents is not None and request.texts is not None:
        raise InvalidRequestError("send either 'documents' or 'texts', not both")
    field = "texts" if request.is_tei else "documents"
    documents: list[DocumentItem] | None = request.documents if request.documents is not None else None
    if documents is None and request.texts is not None:
        documents = list(request.texts)
    if not request.query.strip():
        raise InvalidRequestError("'query' must not be blank")
    if documents is None:
        raise InvalidRequestError("'documents' (or TEI's 'texts') is required")
    if not documents:
        raise InvalidRequestError(f"'{field}' must contain at least one document")
    if len(documents) > max_documents:
        raise PayloadTooLargeError(f"{len(documents)} {field} in one request; the limit is {max_documents}")
    if request.model is not None and not request.model.strip():
        raise InvalidRequestError("'model' must not be blank")
    _check_unicode(request.query, "query")
    _check_unicode(request.model, "model")
    _check_unicode(request.rank_fields, "rank_fields")
    _check_unicode(documents, field)
    texts = [document_text(doc, request.rank_fields, i, field) for i, doc in enumerate(documents)]
    query = RerankQuery(
        model=request.model,
        query=request.query,
        documents=texts,
        top_n=request.top_n,
        max_chunks_per_doc=request.max_chunks_per_doc,
        max_tokens_per_doc=request.max_tokens_per_doc,
        raw_scores=bool(request.raw_scores),
        deadline=deadline,
        strict_deadline=strict_deadline,
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
    """Every error response: Cohere's `{id, message}`; on `/rerank` also TEI's `{error, error_type}`."""

    id: str
    message: str
    error: str | None = Field(default=None, description="TEI: the message (on `/rerank`)")
    error_type: str | None = Field(default=None, description="TEI: Validation, Overloaded, Unhealthy, ...")


class Readiness(BaseModel):
    """`GET /v2/health/ready`."""

    ready: bool


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
