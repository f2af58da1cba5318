"""Building decision events and log fields: the one place that knows their shape.

Emitters (the HTTP engine, the executions, the lease, ``idempotent_function``) call in here
only after a cheap check (``events._listeners``, ``logger.isEnabledFor``): nothing below runs,
allocates or reads a clock on a request nobody observes. Durations are measured by wrapping a
plan (``timed``) only when someone listens.
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Any, TypeVar

import idempotent_middleware.events as events

from ._steps import SLEEP, Plan
from .events import Decision, IdempotencyEvent

T = TypeVar("T")

#: The event fields as log ``extra`` names: stable, prefixed, so JSON formatters keep them.
EXTRA_NAMES = {
    "decision": "idempotency_decision",
    "source": "idempotency_source",
    "method": "idempotency_method",
    "route": "idempotency_route",
    "status": "idempotency_status",
    "store": "idempotency_store",
    "key": "idempotency_key",
    "store_seconds": "idempotency_store_seconds",
    "wait_seconds": "idempotency_wait_seconds",
    "handler_seconds": "idempotency_handler_seconds",
    "error": "idempotency_error",
}


def store_kind(layer: object) -> str:
    """A layer's ``kind`` ("memory", "redis", ...), else its class name."""
    kind = getattr(type(layer), "kind", None)
    return kind if isinstance(kind, str) and kind else type(layer).__name__


def error_name(error: BaseException | None) -> str | None:
    """An exception's class name only: messages may carry client data."""
    return None if error is None else type(error).__name__


def extra(event: IdempotencyEvent) -> dict[str, Any]:
    """The ``extra=`` of a log line about ``event``."""
    return {
        "idempotency_decision": event.decision.value,
        "idempotency_source": event.source,
        "idempotency_method": event.method,
        "idempotency_route": event.route,
        "idempotency_status": event.status,
        "idempotency_store": event.store,
        "idempotency_key": event.key,
        "idempotency_store_seconds": event.store_seconds,
        "idempotency_wait_seconds": event.wait_seconds,
        "idempotency_handler_seconds": event.handler_seconds,
        "idempotency_error": event.error,
    }


def fields(**given: Any) -> dict[str, Any]:
    """``extra=`` for a log line that is not about one decision: the fields it knows."""
    return {EXTRA_NAMES[name]: value for name, value in given.items()}


def publish(
    event: IdempotencyEvent,
    logger: logging.Logger | None = None,
    level: int = logging.DEBUG,
    message: str = "",
    *args: Any,
    exc_info: bool = False,
) -> None:
    """Hand ``event`` to the subscribers, and log ``message`` with its fields when ``logger``
    is given and the level is on (the %-arguments are formatted only then)."""
    if events._listeners:
        events.emit(event)
    if logger is not None and logger.isEnabledFor(level):
        logger.log(level, message, *args, extra=extra(event), exc_info=exc_info)


class Timing:
    """Seconds spent in store steps and in waits (``SLEEP`` steps) of one plan."""

    __slots__ = ("slept", "store", "wait")

    def __init__(self) -> None:
        self.store = 0.0
        self.wait = 0.0
        self.slept = False

    @property
    def wait_seconds(self) -> float | None:
        """The wait, when the plan waited at all (``on_in_progress="wait"``)."""
        return self.wait if self.slept else None


def timed(plan: Plan[T], timing: Timing) -> Plan[T]:
    """``plan`` with the time of each step it yields added to ``timing`` (a transparent
    wrapper: results, exceptions thrown in and ``close`` reach ``plan`` as they would)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.send(value) if error is None else plan.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        started = time.perf_counter()
        try:
            value = yield step
            error = None
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as exc:
            value, error = None, exc
        elapsed = time.perf_counter() - started
        if step.op is SLEEP:
            timing.wait += elapsed
            timing.slept = True
        else:
            timing.store += elapsed


class Observation:
    """What the events of one execution share (made only when someone listens at its claim):
    where it comes from, its key, when its handler started, whether a loss was reported, and
    the context it was claimed in (see ``context``)."""

    __slots__ = ("context", "key", "lost", "method", "route", "source", "started", "store")

    def __init__(
        self, source: str, method: str | None, route: str | None, store: str, key: str
    ) -> None:
        self.source, self.method, self.route, self.store, self.key = (
            source,
            method,
            route,
            store,
            key,
        )
        self.started = time.perf_counter()
        self.lost = False
        #: The request's context variables (its active trace span, for one): a lease finding
        #: made by a renewer thread is published inside it, so subscribers see the request's
        #: context as for every other event. A copy is O(1).
        self.context = contextvars.copy_context()

    def event(
        self,
        decision: Decision,
        status: int | None = None,
        *,
        timing: Timing | None = None,
        handler: bool = False,
        error: str | None = None,
    ) -> IdempotencyEvent:
        """An event of this execution; ``handler``: with the handler's time so far."""
        return IdempotencyEvent(
            decision,
            self.source,
            self.method,
            self.route,
            status,
            self.store,
            self.key,
            store_seconds=None if timing is None else timing.store,
            wait_seconds=None if timing is None else timing.wait_seconds,
            handler_seconds=time.perf_counter() - self.started if handler else None,
            error=error,
        )

    def lease_lost(self, error: str | None = None) -> IdempotencyEvent | None:
        """The lease-lost event, once per execution (the lease and the completion may both
        find out); None when already reported."""
        if self.lost:
            return None
        self.lost = True
        return self.event(Decision.LEASE_LOST, handler=True, error=error)


def lease_event(
    observed: Observation | None, layer: object, key: str, decision: Decision, error: str | None
) -> IdempotencyEvent | None:
    """An event found by a lease: with its execution's fields when it has them."""
    if observed is None:
        observed = Observation("unknown", None, None, store_kind(layer), key)
        observed.started = 0.0
        return observed.event(decision, error=error)
    if decision is Decision.LEASE_LOST:
        return observed.lease_lost(error)
    return observed.event(decision, handler=True, error=error)
