"""Lease events handed to subscribers from a thread of their own, never the renewer's.

The process's one lease renewer thread keeps every sync claim alive; a subscriber run there
(a webhook paging someone on ``lease_lost``) would stop the renewal of every other claim for
as long as it takes, and a lapsed claim lets a retry run its handler a second time. So the
renewer only queues an event (with the request's context to publish it in) and a daemon
dispatcher thread, started on the first event, publishes it. The queue is bounded: when a
slow subscriber lets it fill, further events are dropped and counted, never waited for.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading

from ._observe import publish
from .events import IdempotencyEvent

logger = logging.getLogger("idempotent_middleware")

#: Events waiting for the dispatcher at most; a lease event is rare (a loss, a late write).
QUEUE_LIMIT = 1024

_Item = tuple[contextvars.Context, IdempotencyEvent]


class _Dispatcher:
    """One daemon thread per process that publishes queued lease events, in order."""

    def __init__(self) -> None:
        #: Events dropped because the queue was full (a subscriber too slow for too long).
        self.dropped = 0
        self._reset()

    def _reset(self) -> None:
        # Also the after-fork hook: the parent's queue lock may be held by a parent thread,
        # and its events are the parent's to publish.
        self._queue: queue.Queue[_Item] = queue.Queue(QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def submit(self, context: contextvars.Context, event: IdempotencyEvent) -> None:
        """Queue ``event`` to be published in ``context``; never blocks (drops when full)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            try:
                self._start_thread()
            except Exception:  # no thread to be had (a limit, interpreter shutdown)
                self._drop(event)
                return
        try:
            self._queue.put_nowait((context, event))
        except queue.Full:
            self._drop(event)

    def _drop(self, event: IdempotencyEvent) -> None:
        """Count and log a dropped event: the caller (the renewer) must never wait or fail."""
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            logger.warning(
                "lease event %s dropped: the subscribers are too slow or no dispatcher "
                "thread could start (%d dropped so far)",
                event.decision.value,
                self.dropped,
            )

    def _start_thread(self) -> None:
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._pid == os.getpid():
                return
            thread = threading.Thread(
                target=self._run, name="idempotency-event-dispatcher", daemon=True
            )
            self._thread, self._pid = thread, os.getpid()
            thread.start()

    def _run(self) -> None:
        events = self._queue
        while self._thread is threading.current_thread():
            context, event = events.get()
            try:
                context.run(publish, event)
            except Exception:  # emit already guards each subscriber; this guards the thread
                logger.exception("publishing lease event %s failed", event.decision.value)


dispatcher = _Dispatcher()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=dispatcher._reset)
