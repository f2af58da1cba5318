"""The request fingerprint: same key, other payload is a 422 (IETF draft, section 2.6)."""

from __future__ import annotations

from ..persistence.base import KeyScheme, canonical_parsed_json
from .request import HttpRequest


def fingerprint(scheme: KeyScheme, request: HttpRequest) -> str:
    """Method, path, query and canonical body; the validation expression's value instead
    when one is configured."""
    if scheme.validation_expression is not None:
        return scheme.payload_hash(request.document())
    parsed = request.json_body(literal_numbers=True)
    # Tagged so that a raw body can never equal the canonical form of a parsed one.
    body = b"R" + request.body if parsed is None else b"J" + canonical_parsed_json(parsed)
    head = f"{request.method} {request.path}?".encode("utf-8", "surrogatepass")
    return scheme.generate_hash(head + request.query + b"\n" + body)
