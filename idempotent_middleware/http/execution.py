"""Running the handler under its claim and recording its outcome exactly once.

Every adapter and integration does the same after ``HttpIdempotency.begin`` answered
``Execute``: hold the claim with a lease while the handler runs, copy its response as it goes
out, and record the outcome once (stored, not replayable, unknown, or released). That sequence
lives here, once: ``Execution`` for threads (the process's renewer thread keeps the lease) and
``AsyncExecution`` for an event loop (``AsyncLease``). The callers only feed the capture.

The order rule both follow: stop the lease before a release (a renewal landing after it would
take the key back), keep it until a completion is written, and leave a completion the store
refused to the lease to retry (``finish_later``): the handler ran, so its key must never free
for a second run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)

from .._lease import AsyncLease, _Hold, sync_renewer
from .._steps import drive, drive_async, finishing_writes, to_the_end
from ..persistence.memory import settles_inline
from .capture import ResponseCapture
from .engine import Execute, HttpIdempotency
from .response import StoredResponse

#: How long closing a body early may spend copying the rest of it (the client left).
DRAIN_SECONDS = 5.0
#: Iterators over chunks already in memory: the only ones drained on an early close.
_IN_MEMORY: frozenset[type] = frozenset({type(iter([])), type(iter(()))})

logger = logging.getLogger("idempotent_middleware")

Record = Callable[[BaseException | None, bool], None]
AsyncRecord = Callable[[BaseException | None, bool], Awaitable[None]]


class Execution:
    """One claimed request whose handler runs in a thread."""

    __slots__ = ("action", "capture", "engine", "lease", "recorded")

    def __init__(self, engine: HttpIdempotency, action: Execute) -> None:
        self.engine = engine
        self.action = action
        self.capture = ResponseCapture(engine.config.max_response_body_bytes, engine.excluded)
        self.recorded = False
        try:
            self.lease = sync_renewer.start(
                engine.store,
                action.claim,
                engine.config.lease_seconds,
                engine.config.max_lease_hold_seconds,
            )
        except BaseException:  # the handler has not started: give the key back, never leak it
            drive(engine.store, engine.finish(action, None))
            raise
        if action.observed is not None:
            self.lease.observed = action.observed

    def record(
        self, error: BaseException | None = None, finished: bool = True, client_gone: bool = False
    ) -> None:
        """Record the outcome once (see ``ResponseCapture.outcome``); later calls do nothing."""
        if self.recorded:
            return
        self.recorded = True
        engine, action, lease = self.engine, self.action, self.lease
        outcome = None
        try:
            outcome = self.capture.outcome(error, finished=finished, client_gone=client_gone)
            if engine.releases(outcome):
                lease.stop()
                drive(engine.store, engine.finish(action, outcome))
                return
            lease.closing = True
            pending = drive(engine.store, engine.finish(action, outcome))
        except BaseException as exc:
            _unsettled(engine, action, lease, outcome, exc)
            return
        if pending is None:
            lease.stop()
        else:
            lease.finish_later(pending)

    def record_response(self, response: StoredResponse) -> None:
        """A response the handler returned whole (not streamed): copy and record it."""
        self.capture.start(response.status, response.headers, response.reason)
        self.capture.add(response.body)
        self.record(None, True)

    def abandoned(self, why: str) -> None:
        """The response was dropped unfinished: stop renewing (safe from a finalizer)."""
        if not self.recorded:
            self.lease.abandoned(why)


class AsyncExecution:
    """One claimed request whose handler runs on an event loop (asyncio or trio)."""

    __slots__ = ("action", "capture", "engine", "lease", "loop", "recorded")

    def __init__(self, engine: HttpIdempotency, action: Execute, lease: AsyncLease) -> None:
        self.engine = engine
        self.action = action
        self.lease = lease
        self.capture = ResponseCapture(engine.config.max_response_body_bytes, engine.excluded)
        self.recorded = False
        self.loop = asyncio._get_running_loop()  # None under trio

    @classmethod
    async def start(cls, engine: HttpIdempotency, action: Execute) -> AsyncExecution:
        try:
            lease = AsyncLease(
                engine.store,
                action.claim,
                engine.config.lease_seconds,
                engine.config.max_lease_hold_seconds,
            )
        except BaseException:  # the handler has not started: give the key back
            await drive_async(engine.store, engine.finish(action, None))
            raise
        if action.observed is not None:
            lease.observed = action.observed
        return cls(engine, action, lease)

    async def record(
        self, error: BaseException | None = None, finished: bool = True, client_gone: bool = False
    ) -> None:
        """Record the outcome once, to its end even if the caller's task is cancelled."""
        if self.recorded:
            return
        self.recorded = True
        outcome = self.capture.outcome(error, finished=finished, client_gone=client_gone)
        await to_the_end(self._settle(outcome), inline=settles_inline(self.engine.store))

    async def record_response(self, response: StoredResponse) -> None:
        self.capture.start(response.status, response.headers, response.reason)
        self.capture.add(response.body)
        await self.record(None, True)

    def record_soon(self, error: BaseException | None, client_gone: bool) -> None:
        """Record an unfinished outcome from sync code (a response closed before its body
        ended, maybe from another thread): scheduled on the execution's loop."""
        if self.recorded or self.loop is None or self.loop.is_closed():
            return
        coroutine = self.record(error, False, client_gone)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            task = self.loop.create_task(coroutine)
            finishing_writes.add(task)
            task.add_done_callback(finishing_writes.discard)
        else:
            asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    async def _settle(self, outcome: StoredResponse | None) -> None:
        engine, action, lease = self.engine, self.action, self.lease
        try:
            if engine.releases(outcome):
                await lease.stop_async()  # a renewal in flight must not land after the release
                try:
                    await drive_async(engine.store, engine.finish(action, outcome))
                finally:
                    await lease.released_async()
                return
            lease.closing = True
            pending = await drive_async(engine.store, engine.finish(action, outcome))
        except BaseException as exc:
            _unsettled(engine, action, lease, outcome, exc)
            return
        if pending is None:
            lease.stop()
        else:
            lease.finish_later(pending)


#: What is recorded when the outcome itself cannot be (a response the store format cannot
#: hold): executed, outcome unknown, as for an interrupted request (409 on retry).
_UNKNOWN = StoredResponse(0, [], b"", complete=False, interrupted=True, finished=False)


def _unsettled(
    engine: HttpIdempotency,
    action: Execute,
    lease: _Hold,
    outcome: StoredResponse | None,
    error: BaseException,
) -> None:
    """The settle failed (R4): interrupted mid-write (it may or may not have landed), or the
    outcome could not be encoded. The handler ran, so the lease writes a completion in its
    place (fenced, so harmless if the first write landed) instead of renewing the claim for
    nobody; a lease already stopped for a release ignores it. An ``Exception`` of ours is
    logged, not raised: the app's response still goes out; anything else is raised."""
    record = None
    if outcome is not None:
        try:
            record = engine.completion(action, outcome)
        except Exception:  # not encodable (str headers, a reason outside Latin-1)
            record = None
    lease.closing = True
    lease.finish_later(engine.completion(action, _UNKNOWN) if record is None else record)
    if not isinstance(error, Exception):
        raise error
    logger.error(
        "could not record %s: %s; it is recorded as executed by its lease",
        action.claim.idempotency_key,
        error,
        exc_info=error,
    )


class CapturingIterable:
    """Streams a sync body through, copying it; records the outcome exactly once.

    The outcome is recorded before the last chunk when Content-Length tells which one it is,
    else as soon as the body is exhausted. If the body fails, it is recorded at once (see
    ``ResponseCapture.outcome``). If the server closes early (client gone), the handler has
    run, so its response is recorded rather than released: the rest of a body already in
    memory (a list, a tuple) is copied first; any other body is closed as the server asked,
    never drained (its next chunk may never come: a stream of events, a long poll), and
    recorded executed, not replayable (R11).
    """

    def __init__(self, iterable: Iterable[bytes], capture: ResponseCapture, record: Record) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._capture = capture
        self._record = record
        self._failed = False

    def __iter__(self) -> Iterator[bytes]:
        iterator = self._iterator = iter(self._iterable)
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                break
            except BaseException as exc:
                self._fail(exc)
                raise
            self._capture.add(chunk)
            if self._capture.has_declared_length:
                # The last chunk by Content-Length: record before the server writes it,
                # so a client that has the whole response always gets it replayed.
                self._record(None, True)
            # A server that stops consuming (client gone) closes us here with GeneratorExit:
            # not the app's failure, and close() then drains and records.
            yield chunk
        self._record(None, True)  # the body is complete: record now, before close()

    def _fail(self, exc: BaseException) -> None:
        self._failed = True
        self._record(exc, False)

    def close(self) -> None:
        drained = False
        try:
            if not self._failed:
                drained = self._drain()
        except BaseException as exc:
            # The app failed while we drained (KeyboardInterrupt included): never store the
            # part we copied as the whole response.
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            try:
                close = getattr(self._iterable, "close", None)
                if close is not None:
                    close()
            finally:
                self._record(None, drained)

    def _drain(self) -> bool:
        """Copy what the client did not read when nothing can block doing so (a list or tuple
        body), bounded by the size cap and by time; else give the copy up. True if drained."""
        iterator = self._iterator if self._iterator is not None else iter(self._iterable)
        if type(iterator) not in _IN_MEMORY:
            self._capture.give_up()
            return False
        deadline = time.monotonic() + DRAIN_SECONDS
        for chunk in iterator:
            self._capture.add(chunk)
            if self._capture.overflow:
                break
            if time.monotonic() > deadline:  # an endless stream: executed, not replayable
                self._capture.give_up()
                break
        return True


class AsyncCapturingIterable:
    """The async twin for async bodies (Django's async ``StreamingHttpResponse``).

    Records at the declared length or the end; a body that fails or is closed before its
    end (the client left, the server cancelled the send) is recorded as executed, unfinished.
    No ``close`` attribute on purpose: the integration decides when a close means "gone".
    """

    def __init__(
        self, iterable: AsyncIterable[bytes], capture: ResponseCapture, record: AsyncRecord
    ) -> None:
        self._iterable = iterable
        self._capture = capture
        self._record = record

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        finished = False
        try:
            async for chunk in self._iterable:
                self._capture.add(chunk)
                if self._capture.has_declared_length:
                    await self._record(None, True)
                yield chunk
            finished = True
            await self._record(None, True)
        except BaseException as exc:
            if not finished:
                gone = isinstance(exc, GeneratorExit | asyncio.CancelledError)
                await self._record(None if gone else exc, False)
            raise
