"""Broken persistence layers that the public conformance suite lets through.

Each layer below breaks a promise the middleware relies on (shown first, directly), and the
suite must then fail on it; on main it passes them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from idempotent_middleware._core import Claimed, Replay, plan_claim, plan_complete, plan_renew
from idempotent_middleware._steps import drive, drive_async
from idempotent_middleware.persistence.base import STATUS_INPROGRESS
from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer
from idempotent_middleware.persistence.record import DataRecord
from idempotent_middleware.testing import run_conformance


class KeepsClaimTTL(InMemoryPersistenceLayer):
    """Broken like a Redis layer completing with ``SET ... KEEPTTL``: the store drops a key
    when the claim's lease ends, even once a result with a day-long life is stored there."""

    def __init__(self) -> None:
        super().__init__()
        self._store_ttl: dict[str, float] = {}

    def _live(self, key: str) -> DataRecord | None:
        deadline = self._store_ttl.get(key)
        if deadline is not None and time.time() >= deadline:
            self._store_ttl.pop(key, None)
            self._records.pop(key)
            return None
        return super()._live(key)

    def _put_record(self, data_record: DataRecord) -> None:
        super()._put_record(data_record)
        lease = data_record.in_progress_expiry_timestamp
        if lease is not None:
            self._store_ttl[data_record.idempotency_key] = lease / 1000

    def _renew_lease(self, data_record: DataRecord) -> None:
        super()._renew_lease(data_record)
        lease = data_record.in_progress_expiry_timestamp
        if lease is not None:
            self._store_ttl[data_record.idempotency_key] = lease / 1000

    # _update_record (the completion) keeps the claim's deadline: that is the bug.


class UnfencedAsyncRenew(InMemoryPersistenceLayer):
    """Broken on the async path only: ``_renew_lease_async`` (what the ASGI lease renewer
    calls) overwrites whoever holds the key; the sync ``_renew_lease`` is fenced."""

    async def _renew_lease_async(self, data_record: DataRecord) -> None:
        with self._lock:
            self._records[data_record.idempotency_key] = data_record


class RenewOverCompleted(InMemoryPersistenceLayer):
    """Broken: ``_renew_lease`` checks the owner token only, not that the record is still in
    progress, so a renewal that lands just after the owner's own completion (the renewer
    thread races the handler's completion) turns the stored result back into a claim."""

    def _renew_lease(self, data_record: DataRecord) -> None:
        with self._lock:
            self._owned(data_record)  # raises for another owner only
            self._records[data_record.idempotency_key] = data_record


def _claim(layer: Any, key: str, lease: float, expires: float = 60.0) -> Any:
    return drive(
        layer, plan_claim(layer, key, "", lease_seconds=lease, expires_after_seconds=expires)
    )


def test_keeps_claim_ttl_really_loses_results() -> None:
    """Precondition: the layer loses a stored result once the claim's lease has passed, so a
    retry runs the handler again (promise 1)."""
    layer = KeepsClaimTTL()
    claim = _claim(layer, "k", lease=0.3)
    assert isinstance(claim, Claimed)
    drive(layer, plan_complete(layer, claim.record, b"done", 3600.0, background=False))
    assert isinstance(_claim(layer, "k", lease=30.0), Replay)  # right after: replays
    time.sleep(0.5)
    assert isinstance(_claim(layer, "k", lease=30.0), Claimed)  # the result is gone


def test_conformance_fails_a_layer_that_drops_results_at_the_lease_end() -> None:
    """The TTL check completes with a 1 s life under a 30 s lease and accepts "gone or
    expired"; nothing checks that a result outlives the lease it was claimed with."""
    assert run_conformance(KeepsClaimTTL, pytest_args=["-p", "no:randomly"]) != 0


def test_unfenced_async_renew_really_steals_the_key() -> None:
    """Precondition: a stale owner's async renewal overwrites the new owner's live claim."""
    layer = UnfencedAsyncRenew()
    stale = _claim(layer, "k", lease=0.3).record
    time.sleep(0.5)
    new = _claim(layer, "k", lease=30.0).record
    assert asyncio.run(drive_async(layer, plan_renew(stale, 30.0))) is True
    current = layer._get_record("k")
    assert current.owner == stale.owner != new.owner
    assert current.status == STATUS_INPROGRESS


def test_conformance_fails_an_unfenced_async_renew() -> None:
    """The suite checks renew fencing on the sync path only (test_fencing_async covers
    release and complete), yet the ASGI middleware's lease renews through the async path."""
    assert run_conformance(UnfencedAsyncRenew, pytest_args=["-p", "no:randomly"]) != 0


def test_renew_over_completed_really_loses_the_result() -> None:
    """Precondition: the owner's late renewal replaces its own completed result."""
    layer = RenewOverCompleted()
    claim = _claim(layer, "k", lease=30.0).record
    drive(layer, plan_complete(layer, claim, b"done", 3600.0, background=False))
    assert drive(layer, plan_renew(claim, 30.0)) is True
    assert layer._get_record("k").status == STATUS_INPROGRESS  # the result is gone


def test_conformance_fails_a_renew_that_overwrites_a_completed_record() -> None:
    """Fencing of renew is checked against another owner only; a renewal by the owner after
    its own completion (C1: "a COMPLETED record: refuse") is never tried."""
    assert run_conformance(RenewOverCompleted, pytest_args=["-p", "no:randomly"]) != 0
