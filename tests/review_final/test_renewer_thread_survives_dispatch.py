"""A lease event the dispatcher cannot take must not end the renewer thread.

``_Hold._emit`` on the sync renewer calls ``dispatcher.submit``, which starts the dispatcher
thread on first use (``_dispatch._Dispatcher._start_thread``). Starting a thread can raise
(``RuntimeError: can't start new thread`` under a thread or memory limit; at interpreter
shutdown on Python 3.12+). Nothing between ``submit`` and ``_SyncRenewer._run`` catches it:
``fenced``/``succeeded``/``failed`` run outside ``_renew``'s ``try``, and ``_run`` has no
guard, so the renewer thread dies and every other claim it held stops being renewed (they
lapse after one lease; a retry runs their handlers again) until some new ``add`` restarts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from idempotent_middleware import InMemoryPersistenceLayer
from idempotent_middleware._dispatch import dispatcher
from idempotent_middleware._lease import _SyncRenewer
from idempotent_middleware.events import IdempotencyEvent, subscribe
from idempotent_middleware.persistence.base import DataRecord

LEASE = 0.2


class _Counting(InMemoryPersistenceLayer):
    """Counts the renewals of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals: dict[str, int] = {}

    def _renew_lease(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key
        self.renewals[key] = self.renewals.get(key, 0) + 1
        super()._renew_lease(data_record)


@pytest.fixture
def no_dispatcher_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse() -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(dispatcher, "_thread", None)
    monkeypatch.setattr(dispatcher, "_start_thread", refuse)
    seen: list[IdempotencyEvent] = []
    unsubscribe = subscribe(seen.append)
    try:
        yield
    finally:
        unsubscribe()


@pytest.mark.usefixtures("no_dispatcher_thread")
def test_a_fenced_lease_event_does_not_stop_the_other_renewals() -> None:
    layer = _Counting()
    renewer = _SyncRenewer()
    ours = layer.new_inprogress_record("k#ours", "fp", LEASE, 60)
    layer._put_record(ours)
    theirs = layer.new_inprogress_record("k#taken", "fp", LEASE, 60)
    layer._put_record(layer.new_inprogress_record("k#taken", "fp", 30, 60))  # another owner
    kept = renewer.start(layer, ours, LEASE)
    taken = renewer.start(layer, theirs, LEASE)
    try:
        deadline = time.monotonic() + 10
        while id(taken) in renewer.held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert id(taken) not in renewer.held  # fenced: its LEASE_LOST event was emitted
        after_fence = layer.renewals.get("k#ours", 0)
        while layer.renewals.get("k#ours", 0) <= after_fence + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        thread = renewer._thread
        assert thread is not None and thread.is_alive(), "the renewer thread died"
        assert layer.renewals.get("k#ours", 0) > after_fence + 2  # still renewing ours
    finally:
        kept.stop()
        taken.stop()
