"""Lease renewal while a handler runs longer than half the lease.

The in-progress record lives for ``lease_seconds`` only (a crashed worker blocks its key for one
lease, never for a day); a live handler keeps it alive by renewing every half lease. Renewal is
fenced like completion: once another execution owns the key, renewal stops and says so.
"""

from __future__ import annotations

import asyncio
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
    __slots__ = ("claim", "due", "layer", "lease", "lost", "renewer")

    def __init__(
        self, renewer: _SyncRenewer, layer: BasePersistenceLayer, claim: DataRecord, lease: float
    ) -> None:
        self.renewer, self.layer, self.claim, self.lease = renewer, layer, claim, lease
        self.due = time.monotonic() + lease / 2
        self.lost = False

    def stop(self) -> None:
        self.renewer.held.pop(id(self), None)


class _SyncRenewer:
    """One daemon thread per process renews the leases of every running sync handler.

    Starting and stopping a renewal is a dict insert and a dict pop (no lock, no wake-up):
    the thread looks every quarter of the shortest lease held and renews the claims that
    are half a lease old, so a renewal lands between half and three quarters of the lease.
    """

    def __init__(self) -> None:
        self.held: dict[int, _Renewal] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._tick = 1.0
        self._wake = threading.Event()

    def start(self, layer: BasePersistenceLayer, claim: DataRecord, lease: float) -> _Renewal:
        entry = _Renewal(self, layer, claim, lease)
        self.held[id(entry)] = entry
        if lease / 4 < self._tick:  # a shorter lease than any so far: look sooner
            self._tick = max(lease / 4, 0.01)
            self._wake.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="idempotency-lease-renewer", daemon=True
                    )
                    self._thread.start()
        return entry

    def _run(self) -> None:
        while True:
            self._wake.wait(self._tick)
            self._wake.clear()
            held = list(self.held.values())
            if not held:
                continue
            now = time.monotonic()
            for entry in held:
                if entry.due > now or id(entry) not in self.held:
                    continue
                entry.due = now + entry.lease / 2
                try:
                    ok = drive(entry.layer, plan_renew(entry.claim, entry.lease))
                except Exception:  # store hiccup: try again at the next tick
                    ok = True
                if not ok:
                    entry.lost = True
                    entry.stop()


sync_renewer = _SyncRenewer()
