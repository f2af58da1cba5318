"""Client-controlled text (the path inside a storage key) never starts a line of its own in
a log message or a log field: control characters are backslash-escaped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from idempotent_middleware._labels import printable
from idempotent_middleware.asgi import IdempotencyMiddleware
from idempotent_middleware.exceptions import IdempotencyPersistenceLayerError
from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer


def test_printable_escapes_control_characters_and_backslashes_only() -> None:
    assert printable("POST /orders/é#abc") == "POST /orders/é#abc"
    assert printable("POST /a\nFORGED\r\x00\u2028") == "POST /a\\nFORGED\\r\\x00\\u2028"
    # Backslashes too, so an escaped newline and a literal "\n" read differently.
    assert printable("/a\\n") == "/a\\\\n"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _post(middleware: Any, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k1"), (b"content-length", b"0")],
    }
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return int(sent[0]["status"])


def test_a_key_with_a_newline_is_escaped_in_error_lines_and_fields(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InMemoryPersistenceLayer()

    def refuse(*args: Any) -> None:
        raise IdempotencyPersistenceLayerError("store down")

    monkeypatch.setattr(store, "_update_record", refuse)
    with caplog.at_level(logging.WARNING, logger="idempotent_middleware"):
        _post(IdempotencyMiddleware(_app, store), "/orders\n2026-12-02 CRITICAL forged")
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(r.getMessage().startswith("could not record POST /orders\\n2026") for r in lines)
    for record in lines:
        assert "\n" not in record.getMessage(), record.getMessage()
        assert "\n" not in str(getattr(record, "idempotency_key", "")), record.__dict__
