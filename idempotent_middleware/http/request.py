"""What the core sees of a request, whatever the framework: method, path, headers, body."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl

Headers = list[tuple[bytes, bytes]]

#: Set in the ASGI scope (and the WSGI environ) by the layer that handles a request: a
#: second layer of the middleware on the same request passes it through, instead of finding
#: the outer layer's claim and storing its own 409 as the response for the whole TTL.
HANDLED = "idempotent_middleware.handled"


def normalise_method(method: str) -> str:
    """The method as Werkzeug and Django route it (``post`` is POST); the ASGI spec asks
    servers to upper-case it, but not every server does (h11-based ones pass it as sent)."""
    return method.upper()


class _NumberLiteral(str):
    """A JSON number (or NaN/Infinity) kept as written, for fingerprints only.

    ``canonical_json`` writes it as a string behind a NUL, so it never equals the number's
    float rounding; a JSON string equal to it would have to start with U+0000.
    """

    __slots__ = ()

    def __new__(cls, text: str) -> _NumberLiteral:
        return super().__new__(cls, "\x00" + text)


#: The decoder ``json.loads`` would build for ``parse_float``/``parse_constant`` (it keeps no
#: state between documents).
_LITERAL_DECODER = json.JSONDecoder(parse_float=_NumberLiteral, parse_constant=_NumberLiteral)
_SCAN: Callable[[str, int], tuple[Any, int]] = _LITERAL_DECODER.scan_once  # type: ignore[attr-defined]
#: JSON's insignificant whitespace (RFC 8259 section 2), as ``json.decoder.WHITESPACE``.
#: It matches every string (possibly empty), so ``.end()`` always has a match to read.
_SPACE = cast("Callable[[str, int], re.Match[str]]", re.compile(r"[ \t\n\r]*").match)


def _decode_literal(text: str) -> Any:
    """``_LITERAL_DECODER.decode(text)`` without its two Python frames: the same scanner,
    the same whitespace rule before and after the value (``json.decoder.JSONDecoder``)."""
    try:
        document, end = _SCAN(text, _SPACE(text, 0).end())
    except StopIteration:
        raise ValueError("no JSON value") from None
    if end != len(text) and _SPACE(text, end).end() != len(text):
        raise ValueError("extra data after the JSON value")
    return document


def _json_text(body: bytes) -> str:
    """A bytes document decoded as ``json.loads`` decodes it: a first byte in 1-127 and a
    non-zero second byte is no BOM and no UTF-16/32 pattern, so ``json.detect_encoding``
    would say UTF-8; anything else is asked of it."""
    if len(body) >= 2 and 0 < body[0] < 0x80 and body[1]:
        return body.decode("utf-8", "surrogatepass")
    return body.decode(json.detect_encoding(body), "surrogatepass")


class HttpRequest:
    """What the core sees of a request; ``raw`` is the ASGI scope or the WSGI environ."""

    __slots__ = ("_document", "_headers", "body", "key", "method", "path", "query", "raw")

    def __init__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Headers | None,
        raw: Any,
        body: bytes = b"",
    ) -> None:
        #: Upper-cased: the key, the fingerprint and the JMESPath document see one spelling
        #: (``normalise_method``, inlined: a call costs more than the upper-casing).
        self.method = method.upper()
        self.path = path
        self.query = query
        #: None: built by ``_load_headers`` on first use (a WSGI environ holds them).
        self._headers = headers
        self.raw = raw
        self.body = body
        #: The parsed header key (header mode), set by ``HttpIdempotency.precheck``.
        self.key: bytes | None = None
        self._document: dict[str, Any] | None = None

    @property
    def headers(self) -> Headers:
        """Every header in order, lower-case names and latin-1 bytes."""
        headers = self._headers
        if headers is None:
            headers = self._headers = self._load_headers()
        return headers

    def _load_headers(self) -> Headers:
        return []

    def header(self, name: bytes) -> bytes | None:
        """The last value of a (lower-case) header, or None."""
        found = None
        for key, value in self._headers if self._headers is not None else self.headers:
            if key == name:
                found = value
        return found

    def header_values(self, name: bytes) -> list[bytes]:
        return [
            value
            for key, value in (self._headers if self._headers is not None else self.headers)
            if key == name
        ]

    def json_body(self, *, literal_numbers: bool = False) -> Any:
        """The parsed body for JSON content types, else None (invalid JSON is None too).

        ``literal_numbers`` keeps every non-integer number as the text it was written in
        (``_NumberLiteral``): parsed as floats, ``12345678901234567890.5`` and ``...0.6`` (or
        ``1e400`` and ``2e999``) are one value, and an API that parses Decimals would see two
        payloads share one fingerprint.
        """
        content_type = (self.header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
        if not (content_type == b"application/json" or content_type.endswith(b"+json")):
            return None
        try:
            if literal_numbers:
                # json.loads(body, parse_float=..., parse_constant=...) builds a decoder per
                # call (half the cost of a small body); this one is built once.
                return _decode_literal(_json_text(self.body))
            return json.loads(self.body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
            return None

    def document(self) -> dict[str, Any]:
        """The JMESPath document: method, path, query, headers and JSON body."""
        if self._document is None:
            self._document = {
                "method": self.method,
                "path": self.path,
                "query": dict(parse_qsl(self.query.decode("latin-1"), keep_blank_values=True)),
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers},
                "body": self.json_body(),
            }
        return self._document
