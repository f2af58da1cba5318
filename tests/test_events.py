"""Decision events outside the HTTP table: ``idempotent_function``, log fields, isolation."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer
from idempotent_middleware.events import (
    Decision,
    IdempotencyEvent,
    emit,
    listening,
    subscribe,
)
from idempotent_middleware.function import idempotent_function

from .scenarios.drivers import DRIVERS, Request


@pytest.fixture
def events() -> Iterator[list[IdempotencyEvent]]:
    seen: list[IdempotencyEvent] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


def test_subscribe_and_unsubscribe() -> None:
    seen: list[IdempotencyEvent] = []
    assert not listening()
    unsubscribe = subscribe(seen.append)
    assert listening()
    event = IdempotencyEvent(Decision.REPLAY, "function", None, None, None, "memory", "k#h")
    emit(event)
    unsubscribe()
    unsubscribe()  # twice is harmless
    emit(event)
    assert seen == [event]
    assert not listening()


def test_a_raising_subscriber_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: IdempotencyEvent) -> None:
        raise ValueError("bug")

    seen: list[IdempotencyEvent] = []
    undo = [subscribe(broken), subscribe(seen.append)]
    event = IdempotencyEvent(Decision.EXECUTE, "asgi", "POST", None, None, "memory", "k#h")
    try:
        emit(event)
    finally:
        for u in undo:
            u()
    assert seen == [event]
    (record,) = [r for r in caplog.records if r.name == "idempotent_middleware.events"]
    assert record.idempotency_decision == "execute"  # type: ignore[attr-defined]


def test_function_events(events: list[IdempotencyEvent]) -> None:
    store = InMemoryPersistenceLayer()
    calls: list[int] = []

    @idempotent_function(
        data_keyword_argument="order", persistence_store=store, config=IdempotencyConfig()
    )
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        if order.get("fail"):
            raise RuntimeError("declined")
        return {"ok": True}

    assert charge(order={"id": 1}) == {"ok": True}
    assert charge(order={"id": 1}) == {"ok": True}
    with pytest.raises(RuntimeError):
        charge(order={"id": 2, "fail": True})
    assert [e.decision for e in events] == [
        Decision.EXECUTE,
        Decision.STORED,
        Decision.REPLAY,
        Decision.EXECUTE,
        Decision.RELEASED,
    ]
    for event in events:
        assert event.source == "function"
        assert event.method is None and event.route is None
        assert event.store == "memory"
        assert event.key is not None and "#" in event.key
        assert event.store_seconds is not None
    assert events[1].handler_seconds is not None
    assert events[4].error == "RuntimeError"
    assert events[0].key == events[1].key == events[2].key != events[3].key


@pytest.mark.parametrize("adapter", list(DRIVERS))
def test_log_lines_carry_the_fields(adapter: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="idempotent_middleware")
    driver = DRIVERS[adapter](InMemoryPersistenceLayer(), IdempotencyConfig())
    headers = [("Idempotency-Key", "k1"), ("Content-Type", "application/json")]
    try:
        driver.send(Request("POST", "/orders", headers, b"{}"))
        driver.send(Request("POST", "/orders", headers, b"{}"))
        driver.send(Request("POST", "/orders", headers, b'{"x": 1}'))
        driver.send(Request("POST", "/orders", [("Idempotency-Key", "")], b"{}"))
    finally:
        driver.close()
    ours = [r for r in caplog.records if r.name == "idempotent_middleware"]
    by_decision = {getattr(r, "idempotency_decision", None): r for r in ours}
    for decision in ("execute", "replay", "payload_mismatch", "key_invalid"):
        record: Any = by_decision[decision]
        assert record.idempotency_method == "POST"
        assert record.idempotency_store == "memory"
        assert record.idempotency_source in adapter  # "django" in "django-wsgi"
        assert record.idempotency_route in (None, "/orders", "orders")
    assert by_decision["replay"].idempotency_status == 201  # type: ignore[attr-defined]
    assert by_decision["key_invalid"].idempotency_status == 400  # type: ignore[attr-defined]
    key = by_decision["execute"].idempotency_key  # type: ignore[attr-defined]
    assert key.startswith("POST /orders#") and "k1" not in key
    assert by_decision["key_invalid"].idempotency_key is None  # type: ignore[attr-defined]


def test_no_log_line_is_formatted_when_its_level_is_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listening, DEBUG off: the decision lines are not even built.
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    built: list[object] = []
    import idempotent_middleware._observe as observe

    monkeypatch.setattr(observe, "extra", lambda event: built.append(event) or {})
    driver = DRIVERS["asgi"](InMemoryPersistenceLayer(), IdempotencyConfig())
    headers = [("Idempotency-Key", "k1"), ("Content-Type", "application/json")]
    try:
        driver.send(Request("POST", "/orders", headers, b"{}"))
        driver.send(Request("POST", "/orders", headers, b"{}"))
    finally:
        driver.close()
    assert built == []
