"""Events a subscriber misses."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from werkzeug.test import Client

from idempotent_middleware import WSGIIdempotencyMiddleware
from idempotent_middleware.events import Decision, IdempotencyEvent, subscribe
from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer

pytestmark = pytest.mark.timeout(60)


def test_a_subscriber_added_while_a_handler_runs_sees_its_outcome() -> None:
    """The outcome's event is built from an ``Observation`` made at the claim only if
    someone listened then; a subscriber added later (metrics installed once the app is up,
    a debugging session attached to a live process) never learns that the running request
    stored its response (or lost its lease), though it is listening when that happens."""
    entered, release = threading.Event(), threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        entered.set()
        release.wait(30)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"ok"]

    client = Client(WSGIIdempotencyMiddleware(slow, InMemoryPersistenceLayer()))
    thread = threading.Thread(
        target=lambda: client.post("/orders", headers={"Idempotency-Key": "k1"}, buffered=True)
    )
    thread.start()
    seen: list[IdempotencyEvent] = []
    unsubscribe = None
    try:
        assert entered.wait(10)
        unsubscribe = subscribe(seen.append)
        release.set()
        thread.join(30)
    finally:
        release.set()
        if unsubscribe is not None:
            unsubscribe()
    assert [e.decision for e in seen] == [Decision.STORED], seen
