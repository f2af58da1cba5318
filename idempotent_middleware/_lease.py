"""Lease renewal while a handler runs longer than half the lease.

The in-progress record lives for ``lease_seconds`` only (a crashed worker blocks its key for one
lease, never for a day); a live handler keeps it alive by renewing every half lease. Renewal is
fenced like completion: once another execution owns the key, renewal stops and says so.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import TYPE_CHECKING

from ._core import plan_renew
from ._steps import drive, drive_async

if TYPE_CHECKING:
    from .persistence.base import BasePersistenceLayer, DataRecord


class AsyncLease:
    """Renews one claim from the event loop; costs one timer handle until the half-lease."""

    __slots__ = ("_claim", "_handle", "_layer", "_lease", "_task", "lost")

    def __init__(self, layer: BasePersistenceLayer, claim: DataRecord, lease: float) -> None:
        self._layer, self._claim, self._lease = layer, claim, lease
        self._task: asyncio.Task[None] | None = None
        self.lost = False
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            lease / 2, self._due
        )

    def _due(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        try:
            ok = await drive_async(self._layer, plan_renew(self._claim, self._lease))
        except Exception:  # store hiccup: try again at the next half lease
            ok = True
        if ok:
            self._handle = asyncio.get_running_loop().call_later(self._lease / 2, self._due)
        else:
            self.lost = True
            self._handle = None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _Renewal:
    __slots__ = ("claim", "layer", "lease", "lost", "stopped")

    def __init__(self, layer: BasePersistenceLayer, claim: DataRecord, lease: float) -> None:
        self.layer, self.claim, self.lease = layer, claim, lease
        self.stopped = False
        self.lost = False

    def stop(self) -> None:
        self.stopped = True


class _SyncRenewer:
    """One daemon thread per process renews the leases of every running sync handler."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Renewal]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self, layer: BasePersistenceLayer, claim: DataRecord, lease: float) -> _Renewal:
        entry = _Renewal(layer, claim, lease)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + lease / 2, next(self._counter), entry))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="idempotency-lease-renewer", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, entry = heapq.heappop(self._heap)
            if entry.stopped:
                continue
            try:
                ok = drive(entry.layer, plan_renew(entry.claim, entry.lease))
            except Exception:
                ok = True
            if not ok:
                entry.lost = True
                continue
            with self._cond:
                due = time.monotonic() + entry.lease / 2
                heapq.heappush(self._heap, (due, next(self._counter), entry))


sync_renewer = _SyncRenewer()
