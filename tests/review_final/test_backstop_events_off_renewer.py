"""A lease event found by the thread backstop is published on the renewer thread.

``_SyncRenewer._back_up`` renews an event loop's overdue lease on the renewer thread, but the
lease's ``book`` stays the loop's ``_LoopLeases``; ``_Hold._emit`` hands an event to the
dispatcher only when ``book`` is the sync renewer, so a backstop finding (``fenced``: another
owner took the key; ``_report_lapse``; a pending write landing) runs every subscriber on the
renewer thread itself, the stall review O1 removed: a slow subscriber there stops the
renewal of every other claim, which then lapse and run again on a retry.
"""

from __future__ import annotations

import asyncio
import threading
import time

from idempotent_middleware import InMemoryPersistenceLayer
from idempotent_middleware._lease import AsyncLease
from idempotent_middleware.events import Decision, IdempotencyEvent, subscribe

LEASE = 0.2


def test_a_backstop_lease_lost_is_not_published_on_the_renewer_thread() -> None:
    layer = InMemoryPersistenceLayer()
    threads: list[str] = []

    def listener(event: IdempotencyEvent) -> None:
        if event.decision is Decision.LEASE_LOST:
            threads.append(threading.current_thread().name)

    async def main() -> None:
        claim = layer.new_inprogress_record("b#taken", "fp", LEASE, 60)
        layer._put_record(claim)
        lease = AsyncLease(layer, claim, LEASE)
        # Another execution holds the key now; the loop is blocked (a blocking call in an
        # async handler), so only the backstop renews, and is fenced.
        layer._delete_record(claim)
        layer._put_record(layer.new_inprogress_record("b#taken", "fp", 30, 60))
        deadline = time.monotonic() + 10
        while not threads and time.monotonic() < deadline:
            time.sleep(0.01)
        lease.stop()

    unsubscribe = subscribe(listener)
    try:
        asyncio.run(main())
    finally:
        unsubscribe()
    assert threads, "the backstop never reported the lost lease"
    assert threads[0] != "idempotency-lease-renewer"
