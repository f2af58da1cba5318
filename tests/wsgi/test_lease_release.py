"""WSGI: a response's lease is released even when nobody calls ``close()``, and is capped."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from werkzeug.test import create_environ

from idempotent_middleware import (
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware._lease import sync_renewer

LEASE = 0.2


def _environ(key: str) -> dict[str, Any]:
    return create_environ(
        "/orders",
        method="POST",
        data=b'{"a": 1}',
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )


def _start_response(statuses: list[str]) -> Callable[..., Callable[[bytes], object]]:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    return start_response


def test_item15_dropped_response_iterable_stops_its_renewal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    calls: list[int] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        calls.append(1)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    middleware = WSGIIdempotencyMiddleware(
        app, InMemoryPersistenceLayer(), IdempotencyConfig(lease_seconds=LEASE)
    )
    before = len(sync_renewer.held)
    statuses: list[str] = []
    body = middleware(_environ("dropped"), _start_response(statuses))
    assert len(sync_renewer.held) == before + 1  # renewed while the response is pending
    del body  # a non-compliant outer middleware drops it without close()
    gc.collect()
    assert len(sync_renewer.held) == before
    assert any("without close()" in r.getMessage() for r in caplog.records)
    # No longer renewed: one lease later the key answers again instead of 409 forever.
    time.sleep(LEASE * 3)
    later = middleware(_environ("dropped"), _start_response(statuses))
    list(later)
    getattr(later, "close", lambda: None)()
    assert not statuses[-1].startswith("409"), statuses


def test_item15_closed_response_logs_nothing_when_collected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    middleware = WSGIIdempotencyMiddleware(app, InMemoryPersistenceLayer())
    body = middleware(_environ("closed"), _start_response([]))
    assert b"".join(body) == b"made"
    body.close()  # type: ignore[attr-defined]
    del body
    gc.collect()
    assert not [r for r in caplog.records if "renewal stopped" in r.getMessage()]


def test_item15_max_lease_hold_seconds_caps_a_long_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    held_during: list[int] = []
    before = len(sync_renewer.held)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        held_during.append(len(sync_renewer.held))
        deadline = time.monotonic() + 5.0
        while len(sync_renewer.held) > before and time.monotonic() < deadline:
            time.sleep(0.01)
        held_during.append(len(sync_renewer.held))
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    config = IdempotencyConfig(lease_seconds=LEASE, max_lease_hold_seconds=0.5)
    middleware = WSGIIdempotencyMiddleware(app, InMemoryPersistenceLayer(), config)
    body = middleware(_environ("capped"), _start_response([]))
    list(body)
    body.close()  # type: ignore[attr-defined]
    assert held_during == [before + 1, before]  # renewal stopped while the handler still ran
    assert any("max_lease_hold_seconds" in r.getMessage() for r in caplog.records)


def test_max_lease_hold_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_lease_hold_seconds"):
        IdempotencyConfig(max_lease_hold_seconds=0)
