"""What clients control must not reach events and log lines unbounded or unescaped.

``events.py`` promises: "The event carries no raw client key, no raw path and no user".
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


def test_events_carry_no_raw_path() -> None:
    """The event's ``key`` is the storage key, which holds the raw path whole (up to 128
    bytes): an e-mail address or account id in the path reaches every subscriber (and the
    log lines built from the same fields), against the module's promise."""
    seen: list[IdempotencyEvent] = []
    unsubscribe = subscribe(seen.append)
    middleware = IdempotencyMiddleware(asgi_app, InMemoryPersistenceLayer())
    try:
        path = b"/users/alice@example.com/orders"
        assert post(middleware, path, [(b"idempotency-key", b"k1")]) == 201
    finally:
        unsubscribe()
    assert seen
    for event in seen:
        for value in (event.key, event.route, event.error, event.method):
            assert value is None or "alice@example.com" not in value, event


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
