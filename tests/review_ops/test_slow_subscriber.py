"""A slow subscriber must not cost another request its claim.

Lease events (a lease lost, a completion written late) are handed to subscribers from the
process's one lease renewer thread; while a subscriber runs there, no other claim of the
process is renewed. The README's own example subscriber pages someone on ``lease_lost``: a
webhook that takes a few seconds is enough to let every other held claim lapse, and a retry
then runs a handler that is still running (promise 1).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from werkzeug.test import Client

from idempotent_middleware import IdempotencyConfig, WSGIIdempotencyMiddleware
from idempotent_middleware.events import Decision, IdempotencyEvent, subscribe
from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer

pytestmark = pytest.mark.timeout(60)


class Handler:
    """The first run of each path blocks until ``release``; counts runs per path."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.entered = {"/a": threading.Event(), "/b": threading.Event()}
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        with self.lock:
            self.runs[path] = self.runs.get(path, 0) + 1
            first = self.runs[path] == 1
        if first:
            self.entered[path].set()
            self.release.wait(30)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.mark.parametrize("slow", [False, True], ids=["fast-subscriber-control", "slow-subscriber"])
def test_a_slow_lease_subscriber_lets_other_claims_lapse(slow: bool) -> None:
    store = InMemoryPersistenceLayer()
    handler = Handler()
    # A's renewal stops after 1 s (its hold cap): a lease_lost event from the renewer.
    capped = WSGIIdempotencyMiddleware(
        handler, store, IdempotencyConfig(lease_seconds=0.5, max_lease_hold_seconds=1.0)
    )
    # B is an ordinary long request on another app of the process (same renewer thread).
    normal = WSGIIdempotencyMiddleware(handler, store, IdempotencyConfig(lease_seconds=0.5))
    lost = threading.Event()
    paged = threading.Event()

    def page_on_call(event: IdempotencyEvent) -> None:  # a slow webhook
        if event.decision is Decision.LEASE_LOST and event.key and event.key.startswith("POST /a"):
            lost.set()
            if slow:
                paged.wait(20)

    unsubscribe = subscribe(page_on_call)
    answers: dict[str, int] = {}

    def send(app: Any, path: str, key: str, name: str) -> None:
        reply = Client(app).post(path, headers={"Idempotency-Key": key}, data=b"{}", buffered=True)
        answers[name] = reply.status_code

    threads = [
        threading.Thread(target=send, args=(capped, "/a", "ka", "a")),
        threading.Thread(target=send, args=(normal, "/b", "kb", "b")),
    ]
    try:
        threads[0].start()
        assert handler.entered["/a"].wait(10)
        threads[1].start()
        assert handler.entered["/b"].wait(10)
        assert lost.wait(10), "A's lease was never reported lost"
        # B's handler is still running and its claim should still be renewed; wait well
        # past B's 0.5 s lease, then retry B.
        threading.Event().wait(1.5)
        send(normal, "/b", "kb", "b-retry")
    finally:
        paged.set()
        handler.release.set()
        for thread in threads:
            thread.join(30)
        unsubscribe()
    assert answers["b-retry"] == 409, answers
    assert handler.runs["/b"] == 1, handler.runs
