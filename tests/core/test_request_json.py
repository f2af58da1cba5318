"""``HttpRequest.json_body`` parses a body exactly as ``json.loads`` with the same hooks would."""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idempotent_middleware.exceptions import IdempotencyUnhashableDataError
from idempotent_middleware.http.request import (
    _LITERAL_DECODER,
    HttpRequest,
    _decode_literal,
    _NumberLiteral,
)
from idempotent_middleware.persistence.base import canonical_json, canonical_parsed_json

DOCUMENTS = [
    b'{"sku":"abc","qty":1}',
    b"[1.5, 2e999, NaN, -Infinity, 12345678901234567890.5]",
    b"1",
    b"{}",
    b" {}",
    b'"\xc3\xa9"',
    b'"\xed\xa0\x80"',  # a lone surrogate, as surrogatepass lets through
    b"\xff\xfe",  # invalid UTF-8
    b"",
    b"{",
    '{"a": 1.0}'.encode("utf-16"),
    '{"a": 1.0}'.encode("utf-16-le"),
    '{"a": 1.0}'.encode("utf-16-be"),
    '{"a": 1.0}'.encode("utf-32"),
    '{"a": 1.0}'.encode("utf-32-le"),
    codecs.BOM_UTF8 + b'{"a": 2.5}',
    b"\x00\x00",
    b"7\x00",
    b"1\x00\x00",
]


def reference(body: bytes) -> Any:
    try:
        return json.loads(body, parse_float=_NumberLiteral, parse_constant=_NumberLiteral)
    except (ValueError, RecursionError):
        return None


@pytest.mark.parametrize("body", DOCUMENTS)
def test_literal_parse_matches_json_loads(body: bytes) -> None:
    request = HttpRequest("POST", "/x", b"", [(b"content-type", b"application/json")], {}, body)
    found = request.json_body(literal_numbers=True)
    expected = reference(body)
    assert found == expected
    assert repr(found) == repr(expected)  # the same types all the way down


# --- The fast paths the fingerprint takes agree with the stdlib's own ------------------------
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_SPACING = st.sampled_from(["", " ", "\n", "\t", "\r\n ", "\x0b", "\xa0"])


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES, _SPACING, _SPACING, st.booleans())
def test_decode_and_canonical_fast_paths_match_the_stdlib(
    value: Any, before: str, after: str, indent: bool
) -> None:
    text = before + json.dumps(value, indent=1 if indent else None, ensure_ascii=False) + after
    _agree(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]",:.0123456789eE+-tnulfasrNIy \t\n\r\\\u00e9', max_size=24))
def test_decode_fast_path_refuses_what_the_stdlib_refuses(text: str) -> None:
    _agree(text)


def _agree(text: str) -> None:
    try:
        expected = _LITERAL_DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc) if isinstance(exc, RecursionError) else ValueError):
            _decode_literal(text)
        return
    found = _decode_literal(text)
    assert repr(found) == repr(expected)
    try:
        canonical = canonical_json(expected)
    except IdempotencyUnhashableDataError:
        with pytest.raises(IdempotencyUnhashableDataError):
            canonical_parsed_json(expected)
        return
    assert canonical_parsed_json(found) == canonical
