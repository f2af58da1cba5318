"""The pure HTTP core: key parsing, the stored-response format, problems, routing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer, RouteOptions
from idempotent_middleware._http import HttpIdempotency, StoredResponse, _parse_key
from idempotent_middleware.exceptions import IdempotencyCorruptRecordError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"abc-123", "abc-123"),
        (b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b'"with \\"quote\\""', 'with "quote"'),
        (b"  padded\t", "padded"),
        (b"x" * 255, "x" * 255),
        (b"", None),
        (b'""', None),
        (b"x" * 256, None),
        (b"a,b", None),
        (b"caf\xc3\xa9", None),
        (b"tab\tinside", None),
        (b'"unterminated', None),
        (b'"a"b"', None),
    ],
)
def test_parse_key(raw: bytes, expected: str | None) -> None:
    assert _parse_key(raw) == (None if expected is None else expected.encode())


@given(
    status=st.integers(100, 599),
    headers=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=8),
    body=st.binary(max_size=2000),
    complete=st.booleans(),
)
def test_stored_response_round_trip(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, complete: bool
) -> None:
    response = StoredResponse(status, headers, body, complete)
    assert StoredResponse.decode(response.encode()) == response


@given(st.binary(max_size=64))
def test_stored_response_decode_never_crashes(raw: bytes) -> None:
    try:
        decoded = StoredResponse.decode(raw)
    except IdempotencyCorruptRecordError:
        return
    assert 0 <= decoded.status <= 0xFFFF


def test_problems_are_rfc9457_with_distinct_types() -> None:
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer())
    problems = engine.problems
    responses = [
        problems.missing,
        problems.invalid,
        problems.reused,
        problems.too_large,
        problems.incomplete,
        problems.unavailable,
        problems.corrupt,
        problems.in_progress(3),
        problems.not_replayable(201),
    ]
    types = set()
    for response in responses:
        headers = dict(response.headers)
        assert headers[b"content-type"] == b"application/problem+json"
        assert headers[b"cache-control"] == b"no-store"
        body = json.loads(response.body)
        assert body["status"] == response.status
        types.add(body["type"])
    assert len(types) == len(responses)
    assert dict(problems.in_progress(2.2).headers)[b"retry-after"] == b"3"


def test_routing_rules() -> None:
    config = IdempotencyConfig(
        exclude_paths=["/internal/*"],
        routes={
            "/payments*": RouteOptions(raise_on_no_idempotency_key=True, expires_after_seconds=60),
            "/uploads": RouteOptions(methods=["PUT"]),
        },
    )
    engine = HttpIdempotency(config, InMemoryPersistenceLayer())
    assert engine.rule("GET", "/orders") is None
    assert engine.rule("POST", "/internal/x") is None
    payments = engine.rule("POST", "/payments/1")
    assert payments is not None
    assert payments.key_required
    assert payments.expires_after_seconds == 60
    assert engine.rule("PUT", "/uploads") is not None
    assert engine.rule("POST", "/uploads") is None
    orders = engine.rule("PATCH", "/orders")
    assert orders is not None
    assert not orders.key_required
