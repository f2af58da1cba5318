"""What clients control must not reach events and log lines unbounded or unescaped.

``events.py`` promises: the event never carries the raw client key; its ``key`` is the
storage key (method, path bounded to 128 bytes, digest), and log lines escape what clients
send.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

import pytest

from idempotent_middleware import IdempotencyConfig
from idempotent_middleware.asgi import IdempotencyMiddleware
from idempotent_middleware.events import IdempotencyEvent, subscribe
from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def post(middleware: Any, raw_path: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-length", b"0")],
    }
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return int(sent[0]["status"])


def test_events_carry_no_raw_client_key_and_a_bounded_storage_key() -> None:
    """The event's ``key`` is the storage key (what ``inspect`` looks up), so it holds the
    path, bounded to 128 bytes; the client's key itself must never reach any field."""
    seen: list[IdempotencyEvent] = []
    unsubscribe = subscribe(seen.append)
    middleware = IdempotencyMiddleware(asgi_app, InMemoryPersistenceLayer())
    client_key = b"secret-client-key-alice@example.com"
    long_path = b"/users/" + b"x" * 200 + b"/orders"
    try:
        assert post(middleware, b"/users/1/orders", [(b"idempotency-key", client_key)]) == 201
        assert post(middleware, long_path, [(b"idempotency-key", client_key)]) == 201
    finally:
        unsubscribe()
    assert len(seen) >= 4
    for event in seen:
        for value in (event.key, event.route, event.error, event.method, event.source):
            assert value is None or client_key.decode() not in value, event
        assert event.key is not None
        method, _, rest = event.key.partition(" ")
        path, _, digest = rest.rpartition("#")
        assert method == "POST" and digest
        assert len(path.encode()) <= 128, event.key
    assert {event.key.split("#")[0] for event in seen if event.key} == {
        "POST /users/1/orders",
        "POST /users/" + "x" * 57 + "...",
    }


def test_an_error_line_cannot_be_forged_through_the_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A scope hook that raises on a malformed credential (a JWT parser does) is logged at
    ERROR with ``request.path`` in the message, unescaped: a client sending
    ``/orders%0A<forged line>`` writes a line of its choice into a plain-text log."""

    def scope(request: Any) -> str:
        raise ValueError("malformed token")

    middleware = IdempotencyMiddleware(
        asgi_app, InMemoryPersistenceLayer(), IdempotencyConfig(scope=scope)
    )
    forged = b"/orders%0A2026-12-02 12:00:00 CRITICAL payments: refund approved"
    with caplog.at_level(logging.ERROR, logger="idempotent_middleware"):
        assert post(middleware, forged, [(b"idempotency-key", b"k1")]) == 503
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert messages
    assert not any("\n" in m for m in messages), messages
