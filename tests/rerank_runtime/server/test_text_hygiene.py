"""Text that is not valid Unicode gets a 400 naming the field on every rerank route, and the client's
keep-alive connection keeps working; odd but valid Unicode is scored normally."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.rerank_runtime.server.conftest import API_KEY
from tests.rerank_runtime.server.live_server import LiveServer

RERANK_PATHS = ["/v1/rerank", "/v2/rerank", "/v3/rerank", "/v3/v1/rerank", "/v3/v2/rerank", "/rerank"]
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
GOOD = json.dumps({"query": "welcome", "documents": ["good morning", "farewell"]}).encode()

# What a client's bytes decode to with `surrogateescape` (e.g. a Latin-1 file read as UTF-8): "caf\udce9".
_ESCAPED = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")

# (case, body, field named in the message); JSON escapes written out as the raw bytes a client sends.
BAD_BODIES = [
    ("lone high surrogate in query", b'{"query": "\\ud800x", "documents": ["a"]}', "query"),
    ("lone low surrogate in a document", b'{"query": "q", "documents": ["ok", "a\\udfff"]}', "documents[1]"),
    ("reversed pair", b'{"query": "q", "documents": ["\\udc00\\ud800"]}', "documents[0]"),
    (
        "surrogate in an echoed object field",
        b'{"query": "q", "documents": [{"text": "fine", "note": "\\ud83d"}], "return_documents": true}',
        "documents[0].note",
    ),
    (
        "surrogate in a field name",
        b'{"query": "q", "documents": [{"text": "x", "\\udfff": 1}]}',
        "documents[0]",
    ),
    ("surrogate in the model name", b'{"model": "m\\ud800", "query": "q", "documents": ["a"]}', "model"),
    (
        "surrogate in rank_fields",
        b'{"query": "q", "documents": ["a"], "rank_fields": ["\\udc80"]}',
        "rank_fields",
    ),
    ("surrogateescape text", json.dumps({"query": "q", "documents": [_ESCAPED]}).encode(), "documents[0]"),
    ("surrogateescape query", json.dumps({"query": _ESCAPED, "documents": ["a"]}).encode(), "query"),
]
TEI_BAD = [
    ("TEI texts", b'{"query": "q", "texts": ["ok", "\\udfff"]}', "texts[1]"),
    ("TEI surrogateescape", json.dumps({"query": "q", "texts": [_ESCAPED]}).encode(), "texts[0]"),
]
# Encoded with `surrogatepass`: bytes that are not UTF-8 (Python's JSON decoder lets them through).
CESU_BODY = b'{"query": "q", "documents": ["' + "\ud800".encode("utf-8", "surrogatepass") + b'"]}'
BAD_BODIES.append(("surrogatepass-encoded bytes", CESU_BODY, "documents[0]"))

# Valid Unicode that is unusual: all of it must be scored (200).
ODD_VALID = [
    "emoji \U0001f600 as a JSON surrogate pair",
    "NUL \x00 inside",
    "noncharacters \uffff \ufdd0 \U0010ffff",
    "BOM \ufeff and zero width \u200b\u200d joiners",
    "right-to-left \u05e9\u05dc\u05d5\u05dd \u202e override",
    "combining e\u0301\u0301\u0301 marks",
    "control \x01\x1b[31m escape \x7f",
    "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4",
    "x" * 20_000,
]


def _connection(server: LiveServer) -> http.client.HTTPConnection:
    url = urlsplit(server.base_url)
    assert url.hostname is not None and url.port is not None
    return http.client.HTTPConnection(url.hostname, url.port, timeout=60)


def _post(
    connection: http.client.HTTPConnection, path: str, body: bytes
) -> tuple[int, dict[str, str], bytes]:
    connection.request("POST", path, body=body, headers=HEADERS)
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


@pytest.mark.parametrize("path", RERANK_PATHS)
def test_lone_surrogates_get_400_and_the_connection_survives(f32_server: LiveServer, path: str) -> None:
    """Every malformed-text case: 400 naming the field, then a good request on the SAME socket works."""
    cases = BAD_BODIES + (TEI_BAD if path == "/rerank" else [])
    connection = _connection(f32_server)
    try:
        connection.connect()
        socket = connection.sock
        for case, body, field in cases:
            status, headers, payload = _post(connection, path, body)
            assert status == 400, (case, payload[:300])
            message = json.loads(payload)["message"]
            assert field in message and "surrogate" in message, (case, message)
            assert headers.get("connection", "").lower() != "close", case
            status, headers, payload = _post(connection, path, GOOD)
            assert status == 200, (case, payload[:300])
            assert connection.sock is socket, f"{case}: the server closed the keep-alive connection"
    finally:
        connection.close()


def test_tei_errors_use_tei_names_and_shape(f32_server: LiveServer) -> None:
    """On /rerank errors carry TEI's `error`/`error_type`; messages name `texts` for a TEI body."""
    connection = _connection(f32_server)
    try:
        status, _, payload = _post(connection, "/rerank", b'{"query": "q", "texts": []}')
        body = json.loads(payload)
        assert status == 422 and body["error_type"] == "Validation" and "texts" in body["error"]
        status, _, payload = _post(connection, "/rerank", b'{"query": "q", "texts": ["a", 3]}')
        body = json.loads(payload)
        assert status == 422 and body["error_type"] == "Validation" and body["error"] == body["message"]
        status, _, payload = _post(connection, "/rerank", b'{"query": "q", "texts": "a"}')
        assert status == 422 and "texts" in json.loads(payload)["error"]
        status, _, payload = _post(connection, "/rerank", b'{"query": ')
        assert status == 400 and json.loads(payload)["error_type"] == "Validation"
    finally:
        connection.close()


def test_odd_but_valid_unicode_is_scored(f32_server: LiveServer) -> None:
    """NUL, noncharacters, BOM, RTL overrides, control characters, CJK, emoji pairs: all 200."""
    connection = _connection(f32_server)
    try:
        for path in ("/v1/rerank", "/rerank"):
            field = "texts" if path == "/rerank" else "documents"
            body = json.dumps({"query": "welcome \U0001f44b", field: ODD_VALID}).encode()
            status, _, payload = _post(connection, path, body)
            assert status == 200, payload[:300]
            results = json.loads(payload)
            ranked = results if path == "/rerank" else results["results"]
            assert sorted(r["index"] for r in ranked) == list(range(len(ODD_VALID)))
    finally:
        connection.close()
