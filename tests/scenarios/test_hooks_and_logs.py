"""Hooks let users count replays, conflicts and store errors; every decision logs one line."""

from __future__ import annotations

import logging

import pytest

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer, RedisPersistenceLayer

from .drivers import DRIVERS, Request


@pytest.mark.parametrize("adapter", list(DRIVERS))
def test_hooks_and_debug_lines(adapter: str, caplog: pytest.LogCaptureFixture) -> None:
    counts: dict[str, list[object]] = {"replay": [], "conflict": [], "store": []}
    config = IdempotencyConfig(
        on_replay=lambda key: counts["replay"].append(key),
        on_conflict=lambda key, status: counts["conflict"].append(status),
        on_store_error=lambda exc: counts["store"].append(type(exc).__name__),
    )
    driver = DRIVERS[adapter](InMemoryPersistenceLayer(), config)
    headers = [("Idempotency-Key", "k"), ("Content-Type", "application/json")]
    caplog.set_level(logging.DEBUG, logger="idempotent_middleware")
    try:
        driver.send(Request("POST", "/orders", headers, b"{}"))
        driver.send(Request("POST", "/orders", headers, b"{}"))
        driver.send(Request("POST", "/orders", headers, b'{"x": 1}'))
        driver.send(Request("POST", "/orders", [], b"{}"))
    finally:
        driver.close()
    assert len(counts["replay"]) == 1
    assert counts["conflict"] == [422]
    messages = [r.getMessage() for r in caplog.records if r.name == "idempotent_middleware"]
    assert any(m.startswith("execute ") for m in messages)
    assert any(m.startswith("replay ") for m in messages)
    assert any(m.startswith("422 ") for m in messages)
    # The route label (the framework's template: Django's has no leading slash; else
    # "unmatched"), never the raw path.
    no_key = tuple(f"pass POST {route}: no key" for route in ("/orders", "orders", "unmatched"))
    assert any(m.startswith(no_key) for m in messages)

    broken = DRIVERS[adapter](
        RedisPersistenceLayer(url="redis://127.0.0.1:9/0", socket_connect_timeout=0.2), config
    )
    try:
        reply = broken.send(Request("POST", "/orders", headers, b"{}"))
    finally:
        broken.close()
    assert reply.status == 503
    assert counts["store"] == ["IdempotencyPersistenceLayerError"]
