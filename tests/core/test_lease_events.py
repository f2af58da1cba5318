"""Lease events go through the dispatcher thread: bounded, never blocking, fork-safe."""

from __future__ import annotations

import json
import os
import threading
import warnings
from contextvars import copy_context

import pytest

from idempotent_middleware import _dispatch
from idempotent_middleware._dispatch import _Dispatcher, dispatcher
from idempotent_middleware.events import Decision, IdempotencyEvent, subscribe

pytestmark = pytest.mark.timeout(30)


def _event(key: str) -> IdempotencyEvent:
    return IdempotencyEvent(Decision.LEASE_LOST, "wsgi", "POST", None, None, "memory", key)


def test_a_full_queue_drops_and_counts_instead_of_blocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_dispatch, "QUEUE_LIMIT", 2)
    mine = _Dispatcher()
    entered, release, last = threading.Event(), threading.Event(), threading.Event()
    seen: list[str | None] = []

    def slow(event: IdempotencyEvent) -> None:
        if event.key == "first":
            entered.set()
            release.wait(20)
        seen.append(event.key)
        if event.key == "third":
            last.set()

    unsubscribe = subscribe(slow)
    try:
        mine.submit(copy_context(), _event("first"))
        assert entered.wait(10)
        # The subscriber is stuck: two events fill the queue, the next ones are dropped,
        # and submit returns each time (the renewer thread must never wait here).
        for key in ("second", "third", "dropped", "dropped too"):
            mine.submit(copy_context(), _event(key))
        assert mine.dropped == 2
        release.set()
        assert last.wait(10)
    finally:
        release.set()
        unsubscribe()
    assert seen == ["first", "second", "third"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_publishes_its_own_events_and_not_the_parents() -> None:
    parent = os.getpid()
    entered, release, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[str | None] = []

    def listener(event: IdempotencyEvent) -> None:
        if os.getpid() == parent and event.key == "parent busy":
            entered.set()
            release.wait(20)
        seen.append(event.key)
        if event.key == "child":
            done.set()

    unsubscribe = subscribe(listener)
    try:
        dispatcher.submit(copy_context(), _event("parent busy"))
        assert entered.wait(10)
        dispatcher.submit(copy_context(), _event("parent queued"))  # waiting at the fork
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork()"
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(read_end)
                dispatcher.submit(copy_context(), _event("child"))
                if done.wait(10):
                    os.write(write_end, json.dumps(seen).encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        unsubscribe()
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(b"".join(chunks)) == ["child"]
