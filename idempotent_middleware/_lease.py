"""Lease renewal while a handler runs longer than half the lease.

The in-progress record lives for ``lease_seconds`` only (a crashed worker blocks its key for one
lease, never for a day); a live handler keeps it alive by renewing every half lease. Renewal is
fenced like completion: once another execution owns the key, renewal stops and says so.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import TYPE_CHECKING

from ._core import plan_renew
from ._steps import drive, drive_async

if TYPE_CHECKING:
    from .persistence.base import BasePersistenceLayer, DataRecord


class _LoopLeases:
    """Every claim held on one event loop, looked at by one timer.

    Holding a lease costs a dict insert and a dict pop, not a timer per request: the timer
    fires every quarter of the shortest lease held and renews the claims that are half a
    lease old, so each renewal lands between half and three quarters of its lease.
    """

    __slots__ = ("handle", "held", "loop", "tick")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: dict[int, AsyncLease] = {}
        self.tick = 1.0
        self.handle: asyncio.TimerHandle | None = None

    def add(self, lease: AsyncLease) -> None:
        self.held[id(lease)] = lease
        if lease.lease / 4 < self.tick:  # shorter than any so far: look sooner
            self.tick = max(lease.lease / 4, 0.01)
            if self.handle is not None:
                self.handle.cancel()
                self.handle = None
        if self.handle is None:
            self.handle = self.loop.call_later(self.tick, self._look)

    def _look(self) -> None:
        self.handle = None
        now = self.loop.time()
        for lease in list(self.held.values()):
            if lease.due <= now and (lease.task is None or lease.task.done()):
                lease.due = now + lease.lease / 2
                lease.task = self.loop.create_task(lease.renew())
        if self.held:
            self.handle = self.loop.call_later(self.tick, self._look)


_books: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLeases] = (
    weakref.WeakKeyDictionary()
)


class AsyncLease:
    """Keeps one claim alive from the event loop while its handler runs."""

    __slots__ = ("book", "claim", "due", "layer", "lease", "lost", "task")

    def __init__(self, layer: BasePersistenceLayer, claim: DataRecord, lease: float) -> None:
        loop = asyncio.get_running_loop()
        book = _books.get(loop)
        if book is None:
            book = _books[loop] = _LoopLeases(loop)
        self.book, self.layer, self.claim, self.lease = book, layer, claim, lease
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.due = loop.time() + lease / 2
        book.add(self)

    async def renew(self) -> None:
        try:
            ok = await drive_async(self.layer, plan_renew(self.claim, self.lease))
        except Exception:  # store hiccup: try again at the next look
            ok = True
        if not ok:
            self.lost = True
            self.stop()

    def stop(self) -> None:
        self.book.held.pop(id(self), None)
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()


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
