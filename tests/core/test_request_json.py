"""``HttpRequest.json_body`` parses a body exactly as ``json.loads`` with the same hooks would."""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest

from idempotent_middleware.http.request import HttpRequest, _NumberLiteral

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
