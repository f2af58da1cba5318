"""Lease renewal bookkeeping: cheap to start and stop, nothing left behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable

import pytest

from idempotent_middleware import InMemoryPersistenceLayer
from idempotent_middleware._lease import AsyncLease, sync_renewer
from idempotent_middleware.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyPersistenceLayerError,
)
from idempotent_middleware.persistence.base import DataRecord


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


class _FlakyLayer(InMemoryPersistenceLayer):
    """Its first ``failures`` renewals raise a store error; it records when each was tried."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts: list[float] = []

    def _renew_lease(self, data_record: DataRecord) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise IdempotencyPersistenceLayerError("store hiccup")
        super()._renew_lease(data_record)


LEASE = 2.0


def _claim(layer: InMemoryPersistenceLayer, key: str, lease: float = LEASE) -> DataRecord:
    claim = layer.new_inprogress_record(key, "fp", lease, 60)
    layer._put_record(claim)
    return claim


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_item2_failed_sync_renewal_is_retried_well_before_the_lease_ends() -> None:
    layer = _FlakyLayer(failures=1)
    started = time.monotonic()
    renewal = sync_renewer.start(layer, _claim(layer, "s#flaky"), LEASE)
    try:
        assert _wait_for(lambda: len(layer.attempts) >= 2, LEASE * 2)
    finally:
        renewal.stop()
    first, second = layer.attempts[:2]
    # The retry follows the failure by a small fraction of the lease, not by half a lease.
    assert second - first < LEASE / 4, (first - started, second - started)
    assert second - started < LEASE
    assert not renewal.lost


def test_item2_failed_async_renewal_is_retried_well_before_the_lease_ends() -> None:
    layer = _FlakyLayer(failures=1)

    async def main() -> tuple[float, bool]:
        started = time.monotonic()
        lease = AsyncLease(layer, _claim(layer, "a#flaky"), LEASE)
        deadline = started + LEASE * 2
        while len(layer.attempts) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        lease.stop()
        return started, lease.lost

    started, lost = asyncio.run(main())
    assert len(layer.attempts) >= 2
    first, second = layer.attempts[:2]
    assert second - first < LEASE / 4, (first - started, second - started)
    assert second - started < LEASE
    assert not lost


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_item2_a_lease_that_runs_out_is_reported(
    flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    layer = _FlakyLayer(failures=10**6)
    lease_seconds = 0.4
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    if flavour == "sync":
        renewal = sync_renewer.start(layer, _claim(layer, "s#gone", lease_seconds), lease_seconds)
        assert _wait_for(lambda: renewal.lost, lease_seconds * 5)
        renewal.stop()
    else:

        async def main() -> bool:
            lease = AsyncLease(layer, _claim(layer, "a#gone", lease_seconds), lease_seconds)
            deadline = time.monotonic() + lease_seconds * 5
            while not lease.lost and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            lease.stop()
            return lease.lost

        assert asyncio.run(main())
    assert any("lease lost" in r.getMessage() for r in caplog.records)
    assert len(layer.attempts) >= 3  # it kept retrying while the store failed


def test_item13_asyncio_run_per_job_leaves_no_loop_behind() -> None:
    layer = InMemoryPersistenceLayer()
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def job(i: int) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        lease = AsyncLease(layer, _claim(layer, f"a#job{i}", 0.04), 0.04)
        await asyncio.sleep(0.06)  # long enough for a renewal task to run
        lease.stop()

    for i in range(30):
        asyncio.run(job(i))
    gc.collect()
    alive = [ref for ref in loops if ref() is not None]
    assert not alive, f"{len(alive)} of {len(loops)} event loops are still alive"


def test_item15_sync_renewal_stops_at_max_hold(caplog: pytest.LogCaptureFixture) -> None:
    layer = InMemoryPersistenceLayer()
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    lease_seconds, cap = 0.2, 0.5
    renewal = sync_renewer.start(layer, _claim(layer, "s#cap", lease_seconds), lease_seconds, cap)
    try:
        assert _wait_for(lambda: id(renewal) not in sync_renewer.held, cap + 2.0)
    finally:
        renewal.stop()
    assert renewal.lost
    assert any("max_lease_hold_seconds" in r.getMessage() for r in caplog.records)
    # Not renewed any more: the key frees once its last lease runs out.
    assert _wait_for(lambda: _free(layer, "s#cap"), lease_seconds * 4)


def test_item15_async_renewal_stops_at_max_hold() -> None:
    layer = InMemoryPersistenceLayer()

    async def main() -> bool:
        lease = AsyncLease(layer, _claim(layer, "a#cap", 0.2), 0.2, 0.5)
        deadline = time.monotonic() + 3.0
        while id(lease) in lease.book.held and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        lease.stop()
        return lease.lost

    assert asyncio.run(main())
    assert _wait_for(lambda: _free(layer, "a#cap"), 1.0)


def _free(layer: InMemoryPersistenceLayer, key: str) -> bool:
    try:
        layer._put_record(layer.new_inprogress_record(key, "fp", 30, 60))
    except IdempotencyItemAlreadyExistsError:
        return False
    return True


class _SlowLayer(InMemoryPersistenceLayer):
    """Its renewals take ``delay`` seconds; it records when each one reached the store."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.started = threading.Event()
        self.landed: list[float] = []

    def _renew_lease(self, data_record: DataRecord) -> None:
        self.started.set()
        time.sleep(self.delay)
        try:
            super()._renew_lease(data_record)
        finally:
            self.landed.append(time.monotonic())


def test_item2_stop_waits_for_a_sync_renewal_in_flight() -> None:
    # Otherwise a renewal sent before the handler finished can land after its release and
    # (renewal takes an absent key back) block the key for another lease.
    layer = _SlowLayer(delay=0.3)
    renewal = sync_renewer.start(layer, _claim(layer, "s#inflight", 1.0), 1.0)
    assert layer.started.wait(5)
    renewal.stop()
    stopped = time.monotonic()
    assert layer.landed and layer.landed[-1] <= stopped
