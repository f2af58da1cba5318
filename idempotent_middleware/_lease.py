"""Lease renewal while a handler runs longer than half the lease.

The in-progress record lives for ``lease_seconds`` only (a crashed worker blocks its key for one
lease, never for a day); a live handler keeps it alive by renewing every half lease. Renewal is
fenced like completion: once another execution owns the key, renewal stops and says so.

The timing is written once (``_Hold``) and used by both renewers: the event loop's
(``AsyncLease`` on asyncio) and the process's thread (``sync_renewer``, also used for leases
taken under trio or any other non-asyncio library). A failed renewal is retried soon, with a
bounded back-off, not half a lease later: one store hiccup must not cost the lease. Every lease
that may have lapsed is reported (a warning and ``lost``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

import idempotent_middleware.events as _events

from ._core import plan_renew, plan_store
from ._dispatch import dispatcher
from ._labels import printable
from ._observe import fields, lease_event, publish, store_kind
from ._steps import DELETE, Plan, Step, drive, drive_async
from .events import Decision
from .exceptions import IdempotencyOwnershipError, IdempotencyPersistenceLayerError

if TYPE_CHECKING:
    from ._observe import Observation
    from .persistence.base import BasePersistenceLayer, DataRecord

logger = logging.getLogger("idempotent_middleware")

#: After a failed renewal, retry after this fraction of the lease, doubling per failure up to
#: ``_RETRY_MAX``: a 2 s lease retries after 0.1, 0.2, 0.25, 0.25 ... s, a 30 s lease after
#: 1.5, 3, 3.75 ... s, so several attempts fit in the half lease left after the first one.
_RETRY_FIRST = 1 / 20
_RETRY_MAX = 1 / 8
#: The default cap on how long one execution may hold its key (``max_lease_hold_seconds``).
DEFAULT_MAX_HOLD = 3600.0
#: The most a release waits for a renewal in flight (``AsyncLease.stop_async``), at most a lease.
_SETTLE_MAX = 5.0
#: At interpreter exit, how long the pending completions may take to be written, in all.
EXIT_SECONDS = 5.0


class _Written:
    """What a pending write's plan returns once the completion landed (truthy, like a
    renewal's True): only that attempt, not a renewal sent before the completion was left
    to the lease, may end the hold as written."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True


WRITTEN = _Written()


class _Hold:
    """One held claim and when to renew it. No I/O: the renewers call ``attempt`` and report
    back with ``succeeded`` or ``failed``."""

    __slots__ = (
        "book",
        "claim",
        "closing",
        "due",
        "expires",
        "failures",
        "give_up_at",
        "layer",
        "lease",
        "lost",
        "observed",
        "pending",
    )
    #: The execution's event fields (``_observe.Observation``): set by the caller only when
    #: someone listens, never in ``__init__`` (read with getattr on the rare paths).
    observed: Observation | None

    def __init__(
        self,
        book: _Book,
        layer: BasePersistenceLayer,
        claim: DataRecord,
        lease: float,
        max_hold: float,
    ) -> None:
        now = time.monotonic()
        self.book, self.layer, self.claim, self.lease = book, layer, claim, lease
        self.due = now + lease / 2
        # Conservative: the claim was written before now, so its lease ends no later than this.
        self.expires = now + lease
        self.give_up_at = now + max_hold
        self.failures = 0
        self.lost = False
        #: A completion the handler could not write (store error): the hold keeps the claim
        #: and retries this write instead of renewing, until it lands or the hold cap.
        self.pending: DataRecord | None = None
        #: Set while the handler's own completion is being written: a renewal refused then
        #: is refused because of that completion, not because another execution took over.
        self.closing = False

    def plan(self) -> Any:
        """The periodic step: renew the claim, or write the completion still pending."""
        if self.pending is not None:
            return self._plan_pending(self.pending)
        return plan_renew(self.claim, self.lease)

    def _plan_pending(self, record: DataRecord) -> Any:
        """Write the pending completion; while the store refuses it, keep the in-progress
        claim renewed, so the key never lapses meanwhile (a store that takes claims but not
        this completion, a full in-memory store for one, would otherwise let a retry claim
        the lapsed key and run the handler again)."""
        try:
            return WRITTEN if (yield from plan_store(record)) else False
        except IdempotencyPersistenceLayerError:
            with contextlib.suppress(IdempotencyPersistenceLayerError):
                sent = time.monotonic()
                if (yield from plan_renew(self.claim, self.lease)):
                    # The claim now lives a lease from (no earlier than) now: without this,
                    # ``failed`` would report a lost lease after one lease of refusals.
                    self.expires = max(self.expires, sent + self.lease)
            raise

    def finish_later(self, record: DataRecord) -> None:
        """The handler's completion failed to reach the store: keep holding the key (a
        released lease would let a retry run the handler again) and write ``record`` soon."""
        if id(self) not in self.book.held:
            return
        self.pending = record
        self.failures = 1
        self.due = time.monotonic() + max(self.lease * _RETRY_FIRST, 0.005)
        self._look_soon()

    def _look_soon(self) -> None:
        """Make the renewer look by ``due`` (each renewer knows how)."""

    def attempt(self, now: float) -> bool:
        """Whether to renew now; False (and a warning, once) when the hold cap is reached."""
        if now < self.give_up_at:
            return True
        if self.pending is not None:
            # The handler ran: its completion must land before the key may free (a freed
            # key would run it again). The hold cap bounds renewals, never this write.
            if self.give_up_at != float("inf"):
                self.give_up_at = float("inf")
                logger.error(
                    "completion for %s still not written after max_lease_hold_seconds: "
                    "keeping the key and retrying the write",
                    printable(self.claim.idempotency_key),
                    extra=self._fields(Decision.STORE_ERROR),
                )
            return True
        self.lost = True
        self.book.held.pop(id(self), None)
        logger.warning(
            "lease for %s held longer than max_lease_hold_seconds: renewal stopped, the key "
            "frees when its lease runs out",
            printable(self.claim.idempotency_key),
            extra=self._fields(Decision.LEASE_LOST),
        )
        self._emit(Decision.LEASE_LOST)
        return False

    def succeeded(self, started: float, outcome: object = True) -> None:
        if outcome is WRITTEN:  # the completion is written: nothing left to hold
            self.book.held.pop(id(self), None)
            logger.info(
                "%s recorded on a later attempt",
                printable(self.claim.idempotency_key),
                extra=self._fields(Decision.STORED),
            )
            self._emit(Decision.STORED)
            return
        if started >= self.expires:  # renewed (taken back) only after the lease had run out
            self._report_lapse("the renewal came late")
        # Never moved back: the backstop and the loop may both renew, in either order.
        self.expires = max(self.expires, started + self.lease)
        if self.pending is None:  # else a renewal sent before: the write stays due soon
            self.failures = 0
            self.due = started + self.lease / 2

    def failed(self, now: float, error: BaseException) -> None:
        if id(self) not in self.book.held:
            return  # the handler finished meanwhile: nothing left to renew or report
        if now >= self.expires:
            self._report_lapse(f"renewal kept failing ({error!r})", type(error).__name__)
        self.failures += 1
        backoff = self.lease * min(_RETRY_FIRST * 2 ** min(self.failures - 1, 16), _RETRY_MAX)
        self.due = now + max(backoff, 0.005)

    def fenced(self) -> None:
        """Another execution owns the key: stop for good (silently if the handler already
        finished: then the refusal is about its own completed record)."""
        if id(self) in self.book.held:
            self.book.held.pop(id(self), None)
            if self.closing and self.pending is None:
                return  # our own completion landed first (plan_complete reports a real loss)
            self.lost = True
            logger.warning(
                "lease lost for %s while the handler ran",
                printable(self.claim.idempotency_key),
                extra=self._fields(Decision.LEASE_LOST),
            )
            self._emit(Decision.LEASE_LOST)

    def _report_lapse(self, why: str, error: str | None = None) -> None:
        if not self.lost:
            self.lost = True
            logger.warning(
                "lease lost for %s: it ran out before it was renewed (%s); a duplicate may "
                "have run meanwhile; still trying to take it back",
                printable(self.claim.idempotency_key),
                why,
                extra=self._fields(Decision.LEASE_LOST, error),
            )
            self._emit(Decision.LEASE_LOST, error)

    def _emit(self, decision: Decision, error: str | None = None) -> None:
        """The event of a lease finding (rare: a loss, a late completion), if anyone listens."""
        if _events._listeners:
            observed = getattr(self, "observed", None)
            event = lease_event(observed, self.layer, self.claim.idempotency_key, decision, error)
            if event is None:
                return
            # In the request's context (the sync renewer is a thread of its own); a fresh
            # copy each time, as one context cannot be entered by two threads at once.
            if (
                isinstance(self.book, _SyncRenewer)
                or threading.current_thread() is sync_renewer._thread  # a backstop renewal
            ):
                # Never on the renewer thread: a slow subscriber would stall every other
                # claim's renewal there. The dispatcher thread publishes it (never blocks).
                context = copy_context() if observed is None else observed.context.copy()
                dispatcher.submit(context, event)
            elif observed is None:
                publish(event)
            else:
                observed.context.copy().run(publish, event)

    def _fields(self, decision: Decision, error: str | None = None) -> dict[str, object]:
        observed = getattr(self, "observed", None)
        return fields(
            decision=decision.value,
            source=None if observed is None else observed.source,
            method=None if observed is None else observed.method,
            route=None if observed is None else observed.route,
            store=store_kind(self.layer),
            key=self.claim.idempotency_key,
            error=error,
        )

    def stop(self) -> None:
        self.book.held.pop(id(self), None)
        self.book.settle(self)

    def abandoned(self, why: str) -> None:
        """Stop renewing for a handler that can no longer stop its lease itself (its response
        was dropped unfinished); safe from a finalizer: a dict pop and a log line."""
        if id(self) in self.book.held:
            self.book.held.pop(id(self), None)  # no waiting: this may run in any thread
            logger.warning(
                "lease for %s: %s; renewal stopped, the key frees when its lease runs out",
                printable(self.claim.idempotency_key),
                why,
                extra=self._fields(Decision.LEASE_LOST),
            )
            self._emit(Decision.LEASE_LOST)


class _Book:
    """Where a hold is registered while it is renewed (``stop`` removes it)."""

    __slots__ = ()
    held: dict[int, Any]

    def settle(self, hold: _Hold) -> None:
        """Called by ``stop``: return once no renewal of ``hold`` can still reach the store."""


class _LoopLeases(_Book):
    """Every claim held on one event loop, looked at by one timer.

    Holding a lease costs a dict insert and a dict pop, not a timer per request: the timer
    fires every quarter of the shortest lease held and renews the claims that are half a
    lease old, so each renewal lands between half and three quarters of its lease; a failed
    renewal asks for an earlier look. The book holds no reference to its loop (the loop's
    timers and tasks point to the book, not the other way round), so a loop that ends is
    freed with its book (``asyncio.run`` per job must not leak a loop each time).
    """

    __slots__ = ("__weakref__", "held", "next_look", "tick")

    def __init__(self) -> None:
        self.held: dict[int, AsyncLease] = {}
        self.tick = 1.0
        self.next_look = float("inf")  # when the earliest pending timer fires

    def add(self, lease: AsyncLease, loop: asyncio.AbstractEventLoop) -> None:
        self.held[id(lease)] = lease
        tick = max(lease.lease / 4, 0.01)
        if tick < self.tick:  # rare: a shorter lease than any so far on this loop
            self.tick = tick
            sync_renewer.backstop(self)
        self.look_by(time.monotonic() + self.tick, loop)

    def look_by(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a look happens by ``when`` (an extra timer only if none fires sooner)."""
        if when < self.next_look:
            self.next_look = when
            loop.call_at(loop.time() + max(when - time.monotonic(), 0.0), self._look, when)

    def _look(self, planned: float) -> None:
        if planned != self.next_look:
            return  # superseded by an earlier timer, which looked and planned the next one
        self.next_look = float("inf")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for lease in list(self.held.values()):
            if lease.due <= now and lease.task is None and lease.attempt(now):
                task = lease.task = loop.create_task(lease.renew())
                task.add_done_callback(lease.renewed)
        if self.held:
            soonest = min(lease.due for lease in list(self.held.values()))  # the thread pops too
            self.look_by(max(min(now + self.tick, soonest), now + 0.005), loop)


#: The book of each running loop. Values never reference their key (see ``_LoopLeases``).
_books: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLeases] = (
    weakref.WeakKeyDictionary()
)


class AsyncLease(_Hold):
    """Keeps one claim alive while its async handler runs.

    On asyncio the loop's book renews it; under any other async library (trio) there is no
    asyncio loop, so the process's renewer thread does, with the layer's blocking methods.
    """

    __slots__ = ("home", "late", "task")
    #: The loop a pending completion was handed over from (``finish_later``); set only then.
    home: asyncio.AbstractEventLoop
    #: A renewal still in flight when ``stop_async`` gave up waiting; set only then.
    late: asyncio.Task[Any]

    def __init__(
        self,
        layer: BasePersistenceLayer,
        claim: DataRecord,
        lease: float,
        max_hold: float = DEFAULT_MAX_HOLD,
    ) -> None:
        self.task: asyncio.Task[object] | None = None
        loop = asyncio._get_running_loop()  # the one cheap check: None under trio
        if loop is None:
            super().__init__(sync_renewer, layer, claim, lease, max_hold)
            sync_renewer.add(self)
            return
        book = _books.get(loop)
        if book is None:
            book = _books[loop] = _LoopLeases()
            sync_renewer.backstop(book)
        super().__init__(book, layer, claim, lease, max_hold)
        book.add(self, loop)

    async def renew(self) -> object:
        """One attempt; returns what the store said (truthy: renewed or written)."""
        started = time.monotonic()
        try:
            ok = await drive_async(self.layer, self.plan())
        except Exception as exc:  # store hiccup: retry soon
            self.failed(time.monotonic(), exc)
            if id(self) in self.book.held and isinstance(self.book, _LoopLeases):
                self.book.look_by(self.due, asyncio.get_running_loop())
            return False
        if ok:
            self.succeeded(started, ok)
        else:
            self.fenced()
        return ok

    def finish_later(self, record: DataRecord) -> None:
        """As ``_Hold.finish_later``, but the write is handed to the renewer thread (the
        layer's blocking methods): a loop may end right after its last request
        (``asyncio.run`` per job, a server stopping), and a write left on it would be lost
        with it, freeing the key for a second run after one lease."""
        book, loop = self.book, asyncio._get_running_loop()
        if not isinstance(book, _LoopLeases) or loop is None or id(self) not in book.held:
            super().finish_later(record)
            return
        if sync_renewer.lacks_blocking(self.layer):
            logger.warning(
                "completion for %s left to its event loop (the store has no blocking "
                "methods): it is lost if the loop ends before it is written",
                self.claim.idempotency_key,
                extra=self._fields(Decision.STORE_ERROR),
            )
            super().finish_later(record)
            return
        self.home = loop
        self.pending = record
        self.failures = 1
        self.due = time.monotonic() + max(self.lease * _RETRY_FIRST, 0.005)
        self.book = sync_renewer
        try:
            sync_renewer.add(self)  # before leaving the loop's book: never held by neither
        except Exception:  # no thread: the loop keeps it, as before
            self.book = book
            book.look_by(self.due, loop)
            return
        book.held.pop(id(self), None)
        sync_renewer.wake()

    def look_at_home(self) -> None:
        """Back on the loop's book (the renewer thread cannot write for this layer)."""
        book = _books.get(self.home)
        if book is None:
            book = _books[self.home] = _LoopLeases()
            sync_renewer.backstop(book)
        self.book = book
        book.add(self, self.home)

    def _look_soon(self) -> None:
        loop = asyncio._get_running_loop()
        if isinstance(self.book, _LoopLeases) and loop is not None:
            self.book.look_by(self.due, loop)
        elif isinstance(self.book, _SyncRenewer):
            self.book.wake()

    def renewed(self, task: asyncio.Task[object]) -> None:
        # Drop the task (and through it the loop) as soon as it is done.
        if self.task is task:
            self.task = None

    def stop(self) -> None:
        self.book.held.pop(id(self), None)
        sync_renewer.settle(self)  # a thread renewal (trio, the backstop) in flight
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def stop_async(self) -> None:
        """``stop`` before a release: wait (bounded) for a renewal already sent.

        Cancelling its task cannot unsend a command another task carries (a pooled or
        pipelined client): landing after the release, it would take the freed key back
        (a renewal takes an absent key back) and block it for a lease. The sync renewer
        waits the same way (``_SyncRenewer.settle``). One still in flight after the bound
        is kept for ``released_async``.
        """
        self.book.held.pop(id(self), None)
        sync_renewer.settle(self)  # a thread renewal (trio, the backstop) in flight
        task = self.task
        if task is None or task.done() or task is asyncio.current_task():
            return
        await asyncio.wait((task,), timeout=self._settle_bound())
        if not task.done():
            self.late = task

    async def released_async(self) -> None:
        """After the release: a renewal that was still in flight may land now; once it has,
        give the key back again if it took it back (fenced by owner: never a new claim)."""
        task: asyncio.Task[Any] | None = getattr(self, "late", None)
        if task is None:
            return
        del self.late
        if not task.done():
            await asyncio.wait((task,), timeout=self._settle_bound())
        if not task.done():
            task.cancel()  # as before: a store this slow is past helping
            return
        if task.cancelled() or task.exception() is not None or not task.result():
            return
        try:
            await drive_async(self.layer, _plan_release_again(self.claim))
        except Exception as exc:
            logger.warning(
                "a late renewal took %s back after its release and it could not be given "
                "back (%r): the key frees when its lease runs out",
                self.claim.idempotency_key,
                exc,
                extra=self._fields(Decision.STORE_ERROR, type(exc).__name__),
            )

    def _settle_bound(self) -> float:
        """How long a release waits for a renewal in flight: the layer bounds each call by
        its own timeout; this only caps a store that never answers."""
        return min(self.lease, _SETTLE_MAX)


def _plan_release_again(claim: DataRecord) -> Plan[None]:
    """Delete ``claim`` if its owner still holds it (silently not, when another does)."""
    with contextlib.suppress(IdempotencyOwnershipError):
        yield Step(DELETE, claim)


class _Renewal(_Hold):
    """A claim held by a sync handler (thread renewer)."""

    __slots__ = ()

    def _look_soon(self) -> None:
        assert isinstance(self.book, _SyncRenewer)
        self.book.wake()


class _SyncRenewer(_Book):
    """One daemon thread per process renews the leases of every running sync handler, and
    is the backstop of the event loops' leases.

    Starting and stopping a renewal is a dict insert and a dict pop (no lock, no wake-up):
    the thread looks every quarter of the shortest lease held, or sooner when a failed
    renewal is due for a retry. A failed attempt never makes the thread sleep (its retry is
    only scheduled), and the claims closest to running out are renewed first, so one slow
    store call delays the others by its own duration at most (bounded by the layer's socket
    timeout). After ``fork`` the child starts its own thread (threads do not survive a fork).

    The backstop: a loop renews its leases with its own timer, which cannot fire while an
    async handler blocks the loop (a blocking call inside ``async def``); past a lease the
    claim would lapse and a retry on another worker run the handler again (a sync handler
    keeps its claim: this thread renews it). So the thread also looks at every loop's book
    (registered once per loop, nothing per request) and renews, with the layer's blocking
    methods, a lease whose loop renewal is overdue by a quarter lease. Renewals are fenced
    by owner, so one made by both is harmless.
    """

    def __init__(self) -> None:
        self.held: dict[int, _Hold] = {}
        self._reset()

    def _reset(self) -> None:
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._tick = 1.0
        self._wake = threading.Event()
        #: Held by the thread while it renews ``_renewing``; ``settle`` waits on it.
        self._attempt = threading.Lock()
        self._renewing: _Hold | None = None
        #: Layers whose blocking methods failed as missing (by id; the value tells it is the same).
        self._async_only: dict[int, weakref.ref[BasePersistenceLayer]] = {}
        #: The books of the loops this thread backs up (``backstop``), gone with their loop.
        self._books: dict[int, weakref.ref[_LoopLeases]] = {}

    def _after_fork_in_child(self) -> None:
        # The parent's claims are the parent's to renew; a lock held by a parent thread at
        # fork time would never be released here.
        self.held.clear()
        self._reset()

    def start(
        self,
        layer: BasePersistenceLayer,
        claim: DataRecord,
        lease: float,
        max_hold: float = DEFAULT_MAX_HOLD,
    ) -> _Renewal:
        entry = _Renewal(self, layer, claim, lease, max_hold)
        self.add(entry)
        return entry

    def add(self, entry: _Hold) -> None:
        self.held[id(entry)] = entry
        if entry.lease / 4 < self._tick:  # a shorter lease than any so far: look sooner
            self._tick = max(entry.lease / 4, 0.01)
            self._wake.set()
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            try:
                self._start_thread()
            except BaseException:  # no thread, no renewal: the caller gives the claim back
                self.held.pop(id(entry), None)
                raise

    def _start_thread(self) -> None:
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._pid == os.getpid():
                return
            thread = threading.Thread(
                target=self._run, name="idempotency-lease-renewer", daemon=True
            )
            # Known before it runs: a thread that is not ``_thread`` ends itself.
            self._thread, self._pid = thread, os.getpid()
            thread.start()

    def _run(self) -> None:
        wait = self._tick
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            wait = self._tick
            if self._thread is not threading.current_thread():
                return  # replaced (after a fork in an odd order): only one thread renews
            if self._books:
                self._back_up()
            if not self.held:
                continue
            for entry in sorted(self.held.values(), key=lambda held: held.expires):
                if entry.due > time.monotonic():
                    continue
                with self._attempt:
                    # Published before the check: a ``stop`` that pops after the check
                    # sees it and waits for this attempt to reach the store first.
                    self._renewing = entry
                    try:
                        if id(entry) in self.held:
                            self._renew(entry)
                    finally:
                        self._renewing = None
            now = time.monotonic()
            soonest = min((entry.due for entry in list(self.held.values())), default=now + wait)
            wait = max(min(wait, soonest - now), 0.005)

    def wake(self) -> None:
        """Look now (a hold has something due sooner than the next tick)."""
        self._wake.set()

    def backstop(self, book: _LoopLeases) -> None:
        """Watch ``book`` (a new loop, or a shorter lease on it): look at least every eighth
        of its shortest lease, so an overdue lease is renewed before it runs out."""
        key = id(book)
        if key not in self._books:
            books = self._books

            def forget(_: object) -> None:
                books.pop(key, None)

            books[key] = weakref.ref(book, forget)
        if book.tick / 2 < self._tick:
            self._tick = max(book.tick / 2, 0.005)
            self._wake.set()
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            with contextlib.suppress(Exception):  # a backstop only: the loop still renews
                self._start_thread()

    def _back_up(self) -> None:
        """Renew the loops' leases whose renewal is overdue (see the class docstring)."""
        for ref in list(self._books.values()):
            book = ref()
            if book is None:
                continue
            for lease in list(book.held.values()):
                if lease.due + lease.lease / 4 > time.monotonic() or self.lacks_blocking(
                    lease.layer
                ):
                    continue
                with self._attempt:
                    self._renewing = lease  # as in ``_run``: ``settle`` waits for it
                    try:
                        if id(lease) in book.held:
                            self._renew(lease)
                    finally:
                        self._renewing = None

    def lacks_blocking(self, layer: BasePersistenceLayer) -> bool:
        """Whether ``layer`` was seen to have no working blocking methods (an async-only
        client or pool): this thread cannot write or renew for it."""
        return id(layer) in self._async_only and self._async_only[id(layer)]() is layer

    def _cannot_block(self, entry: _Hold, error: BaseException) -> bool:
        """A handed-over completion (``AsyncLease.finish_later``) whose layer turns out to
        have no blocking methods goes back to its loop (the write was kept there before);
        False when ``entry`` is not such a hold (then an ordinary failure)."""
        if not isinstance(entry, AsyncLease):
            return False
        if isinstance(entry.book, _LoopLeases):  # a backstop renewal: its loop renews it
            self._note_async_only(entry.layer)
            return True
        home = getattr(entry, "home", None)
        if home is None or entry.pending is None:
            return False  # under trio this thread is its only renewer: an ordinary failure
        self._note_async_only(entry.layer)
        self.held.pop(id(entry), None)
        try:
            home.call_soon_threadsafe(entry.look_at_home)
        except RuntimeError:  # the loop is closed: nobody is left to write it
            logger.error(
                "completion for %s not written: the store has no blocking methods (%r) and "
                "its event loop has ended; a retry after the lease runs the handler again",
                entry.claim.idempotency_key,
                error,
                extra=entry._fields(Decision.STORE_ERROR, type(error).__name__),
            )
        return True

    def _note_async_only(self, layer: BasePersistenceLayer) -> None:
        with contextlib.suppress(TypeError):  # a layer that refuses weak references
            self._async_only[id(layer)] = weakref.ref(layer)

    def write_pending_at_exit(self) -> None:
        """At interpreter exit, try each pending completion once, bounded in time.

        A worker that exits normally (recycled after N requests, a job runner's child) would
        otherwise take the writes left to this daemon thread with it: the key would free
        after one lease and a retry would run the handler again. The unwritten are logged.
        """
        if self._pid != os.getpid():
            return  # a forked child that never held anything of its own
        waiting = [entry for entry in list(self.held.values()) if entry.pending is not None]
        for ref in list(self._books.values()):  # kept on a loop: nothing can write them now
            book = ref()
            if book is not None:
                waiting.extend(
                    held for held in list(book.held.values()) if held.pending is not None
                )
        if not waiting:
            return
        deadline = time.monotonic() + EXIT_SECONDS
        attempting = self._attempt.acquire(timeout=EXIT_SECONDS)  # the thread waits meanwhile
        try:
            for entry in waiting:
                if (
                    isinstance(entry.book, _SyncRenewer)
                    and attempting
                    and time.monotonic() < deadline
                    and id(entry) in self.held
                ):
                    self._renew(entry)
                if id(entry) in entry.book.held:
                    logger.error(
                        "completion for %s not written before the process exited; a retry "
                        "after the lease runs the handler again",
                        entry.claim.idempotency_key,
                        extra=entry._fields(Decision.STORE_ERROR),
                    )
        finally:
            if attempting:
                self._attempt.release()

    def settle(self, hold: _Hold) -> None:
        # A renewal still in flight on another connection could land after the handler's
        # completion or release (and re-store a released claim): wait for it, bounded by the
        # layer's socket timeout. Never from the renewer thread itself (a finalizer there).
        if self._renewing is hold and threading.current_thread() is not self._thread:
            with self._attempt:
                pass

    def _renew(self, entry: _Hold) -> None:
        """One attempt; whatever it raises stays here, as this thread renews every other
        claim of the process (a dead renewer lets them all lapse and run again)."""
        try:
            self._renew_once(entry)
        except Exception:
            logger.exception("lease renewal of %s failed", printable(entry.claim.idempotency_key))

    def _renew_once(self, entry: _Hold) -> None:
        started = time.monotonic()
        if not entry.attempt(started):
            return
        try:
            ok = drive(entry.layer, entry.plan())
        except (TypeError, NotImplementedError) as exc:  # no blocking methods (async only)
            if not self._cannot_block(entry, exc):
                entry.failed(time.monotonic(), exc)
            return
        except Exception as exc:  # store hiccup: retry soon
            entry.failed(time.monotonic(), exc)
            return
        if ok:
            entry.succeeded(started, ok)
        else:
            entry.fenced()


sync_renewer = _SyncRenewer()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=sync_renewer._after_fork_in_child)
atexit.register(sync_renewer.write_pending_at_exit)
