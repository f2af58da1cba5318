"""The exact bytes of fingerprints, canonical JSON and key digests, pinned.

Records written by one release are compared with fingerprints computed by the next (a rolling
deploy, a fleet on two versions): if a speed-up changed any of these bytes, honest retries
would be answered 422 and header keys would miss their records. The values below come from
the code as it stood before the fingerprint was optimised; they must never change.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
from typing import Any

import pytest

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer
from idempotent_middleware.http.engine import HttpIdempotency
from idempotent_middleware.http.fingerprint import fingerprint
from idempotent_middleware.http.request import Headers, HttpRequest
from idempotent_middleware.persistence.base import canonical_json

JSON: Headers = [(b"content-type", b"application/json")]


def _scheme() -> Any:
    return HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer()).scheme


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "body", "expected"),
    [
        (
            "POST",
            "/orders",
            b"",
            JSON,
            b'{"sku":"abc","qty":1}',
            "0955a8c30382d7584e2ba984f1d491a5bebbe429316673ffe21c92eae0041db4",
        ),
        (  # whitespace and key order do not count
            "POST",
            "/orders",
            b"",
            JSON,
            b'{ "qty" : 1 , "sku" : "abc" }',
            "0955a8c30382d7584e2ba984f1d491a5bebbe429316673ffe21c92eae0041db4",
        ),
        (  # numbers kept as written, non-ASCII text, a query string
            "POST",
            "/orders",
            b"a=1&b=2",
            JSON,
            b'{"price": 12345678901234567890.5, "n": [1, 2.50, 1e400, -0.0], '
            b'"u": "caf\\u00e9 \xe2\x82\xac"}',
            "ff6551b795010350b72358452194268f2f4e50f0a44695d661ffac3e0617a768",
        ),
        (  # a +json type with parameters, NaN, nesting
            "POST",
            "/orders",
            b"",
            [(b"content-type", b"application/problem+json; charset=utf-8")],
            b'{"z":{"b":null,"a":[true,false]},"a":NaN}',
            "b8cb38d3974ab3dcf1d3e0c6ae153d054463f94aad3f565878085e6209460db0",
        ),
        (  # not a JSON content type: the raw bytes
            "POST",
            "/orders",
            b"",
            [(b"content-type", b"text/plain")],
            b'{"sku":"abc","qty":1}',
            "3659e321ee82ba56878c135c2344f7f14c014c262c8b9e2c8e4a274888b46bda",
        ),
        (  # invalid JSON under a JSON type: the raw bytes; a non-ASCII path
            "PUT",
            "/caf\u00e9/x",
            b"",
            JSON,
            b"not json",
            "a5969640a4b105ca6ae1273f5d38ca194bbbfca4b69748d29712d0381ad078dc",
        ),
        (
            "POST",
            "/orders",
            b"",
            JSON,
            b"",
            "56b8dd68cbdf6687defebc35540386dffbfd02a18a335b1d44a326272ca32cd3",
        ),
    ],
)
def test_fingerprint_bytes_are_pinned(
    method: str, path: str, query: bytes, headers: Headers, body: bytes, expected: str
) -> None:
    request = HttpRequest(method, path, query, headers, None, body)
    assert fingerprint(_scheme(), request) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (  # UTF-16 with its BOM (json's detect_encoding)
            '{"a": 1.50, "b": "\u00e9"}'.encode("utf-16"),
            "8c3d6f939aebaf406b2be0291546cb095d7eca1c3126332bb02143322b7b0acf",
        ),
        (
            b'\xef\xbb\xbf{"a": 1.5}',
            "3f07452df3a89a624371c966a33b0e18692afd8d721119aade207f1438e1ccfb",
        ),
        (
            '{"a": -Infinity}'.encode("utf-32-le"),
            "c1013a02bb4fd22deb863b1999909cd850aa8cc115c50ae6f8fcafaa3e92ecb9",
        ),
        (  # not UTF-8: the raw bytes
            b'{"a": "\xff"}',
            "2628afeed42e30cec0075dd43d0bea6b8fc9b31a177913eed38357e3f0780962",
        ),
    ],
)
def test_fingerprint_of_other_encodings_is_pinned(body: bytes, expected: str) -> None:
    request = HttpRequest("POST", "/o", b"", JSON, None, body)
    assert fingerprint(_scheme(), request) == expected


def test_fingerprint_recipe_is_the_documented_one() -> None:
    """SHA-256 of ``"{METHOD} {path}?" + query + "\\n"`` and the tagged body."""
    parsed = HttpRequest("POST", "/orders", b"", JSON, None, b'{"sku":"abc","qty":1}')
    raw = HttpRequest("POST", "/orders", b"", [], None, b'{"sku":"abc","qty":1}')
    assert fingerprint(_scheme(), parsed) == (
        hashlib.sha256(b'POST /orders?\nJ{"qty":1,"sku":"abc"}').hexdigest()
    )
    assert fingerprint(_scheme(), raw) == (
        hashlib.sha256(b'POST /orders?\nR{"sku":"abc","qty":1}').hexdigest()
    )


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"b": 1, "a": [1.5, None, True, "\u00e9"]}, b'{"a":[1.5,null,true,"\xc3\xa9"],"b":1}'),
        ([None, {"k": b"x\xff"}], b'[null,{"k":"x\xc3\xbf"}]'),
        (
            {"d": decimal.Decimal("1.10"), "t": datetime.date(2024, 1, 2), "s": {3, 1, 2}},
            b'{"d":"1.10","s":[1,2,3],"t":"2024-01-02"}',
        ),
        ("x", b'"x"'),
    ],
)
def test_canonical_json_bytes_are_pinned(document: Any, expected: bytes) -> None:
    assert canonical_json(document) == expected


def test_header_key_digest_is_pinned() -> None:
    assert _scheme().generate_hash(b"key-1") == (
        "be2974546978e3739e6d6da85c4be9f334ce32df2b9fd4b6ff1b55c0d57e9d44"
    )
