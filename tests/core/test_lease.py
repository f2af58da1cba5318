"""Lease renewal bookkeeping: cheap to start and stop, nothing left behind."""

from __future__ import annotations

import asyncio
import time

from idempotent_middleware import InMemoryPersistenceLayer
from idempotent_middleware._lease import AsyncLease, sync_renewer


def test_stopped_sync_renewals_leave_nothing_behind() -> None:
    layer = InMemoryPersistenceLayer()
    before = len(sync_renewer.held)
    renewals = []
    for i in range(200):
        claim = layer.new_inprogress_record(f"s#{i}", "fp", 30, 60)
        layer._put_record(claim)
        renewals.append(sync_renewer.start(layer, claim, 30))
    assert len(sync_renewer.held) == before + 200
    for renewal in renewals:
        renewal.stop()
    assert len(sync_renewer.held) == before


def test_sync_renewal_keeps_a_short_lease_alive_then_stops() -> None:
    layer = InMemoryPersistenceLayer()
    claim = layer.new_inprogress_record("s#short", "fp", 0.2, 60)
    layer._put_record(claim)
    renewal = sync_renewer.start(layer, claim, 0.2)
    time.sleep(0.6)
    assert layer._get_record("s#short").owner == claim.owner  # still ours, three leases on
    renewal.stop()
    time.sleep(0.35)  # no renewal any more: the lease runs out and the key is free again
    layer._put_record(layer.new_inprogress_record("s#short", "fp", 30, 60))


def test_async_lease_renews_until_stopped() -> None:
    layer = InMemoryPersistenceLayer()

    async def main() -> None:
        claim = layer.new_inprogress_record("a#short", "fp", 0.2, 60)
        layer._put_record(claim)
        lease = AsyncLease(layer, claim, 0.2)
        await asyncio.sleep(0.6)
        assert layer._get_record("a#short").owner == claim.owner
        assert not lease.lost
        lease.stop()

    asyncio.run(main())
