"""One typed event per decision, for metrics, traces and logs.

Every decision the middleware (or ``idempotent_function``) takes is described by one
:class:`IdempotencyEvent` handed to each subscriber, synchronously and in the request's own
context (so a subscriber sees the active server span and context variables). Subscribers must
be fast: they run in the request's thread or on its event loop. Only lease findings of sync
handlers are handed over later by a dispatcher thread (never the lease renewer's: a slow
subscriber there would let other claims lapse), from a bounded queue that drops when full.

The event never carries the raw client key nor the user. Its labels (method, route template
or configured pattern, store, decision) are bounded, so metrics built on them cannot be blown
up by clients. ``key`` is the storage key (what ``idempotent-middleware inspect`` looks up):
``"{METHOD} {path}#{digest of tenant and client key}"``, the path whole up to 128 UTF-8
bytes, else cut to 64 bytes and folded into the hash: it holds the path, so it is no label.

Nobody listening costs one truth test per decision: emitters check :func:`listening` before they
build an event. A subscriber that raises is logged and never breaks a request.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ._labels import printable

__all__ = ["Decision", "IdempotencyEvent", "Listener", "emit", "listening", "subscribe"]

logger = logging.getLogger("idempotent_middleware.events")


class Decision(str, enum.Enum):
    """What was decided; the value is the stable label used by metrics and logs."""

    EXECUTE = "execute"  #: the key was claimed and the handler runs
    REPLAY = "replay"  #: a stored response (or result) was replayed
    IN_PROGRESS = "in_progress"  #: 409: another request holds the key
    PAYLOAD_MISMATCH = "payload_mismatch"  #: 422: the key was used with another payload
    KEY_INVALID = "key_invalid"  #: 400: the key is missing, malformed or unusable
    TOO_LARGE = "too_large"  #: 413: the body is over the cap
    NOT_STORED = "not_stored"  #: the handler ran; its status is not stored, the key is freed
    RELEASED = "released"  #: the handler raised before responding; the key is freed
    LEASE_LOST = "lease_lost"  #: the claim lapsed while the handler ran: a possible double run
    STORE_ERROR = "store_error"  #: 503 (or a record that could not be written)
    FAIL_OPEN = "fail_open"  #: the store was unreachable; the handler ran unprotected
    STORED = "stored"  #: the handler's response (or result) was recorded
    # Added with the emitters (issue 11); the ones above are the first API, never renamed.
    NO_KEY = "no_key"  #: no key and none required: passed through unprotected
    UNAUTHENTICATED = "unauthenticated"  #: 401: the scope hook refused (no user to scope by)
    SCOPE_ERROR = "scope_error"  #: 503: the scope hook raised; nothing claimed
    LENGTH_REQUIRED = "length_required"  #: 411: a body without a length; nothing claimed
    BODY_INCOMPLETE = "body_incomplete"  #: 400 (or no answer: client gone): body cut short


@dataclass(frozen=True, slots=True)
class IdempotencyEvent:
    """One decision. Fields a source cannot know are None."""

    decision: Decision
    #: "asgi", "wsgi", "django", "flask", "fastapi", "litestar" or "function".
    source: str
    #: Upper-case HTTP method, or None for functions.
    method: str | None
    #: The route template ("/payments/{id}") where the integration knows it, else the
    #: configured pattern that matched, else None; never the raw request path.
    route: str | None
    #: The HTTP status answered (or stored, for ``STORED``), when there is one.
    status: int | None
    #: The store kind: "memory", "redis", "postgres", "sqlite", or the layer's class name.
    store: str
    #: The storage key (what the store holds): method, path (at most 128 bytes, else a
    #: 64-byte prefix and a hash) and a digest of the tenant and client key; never the
    #: client's key itself.
    key: str | None
    #: Seconds spent in the store for this decision, when measured.
    store_seconds: float | None = None
    #: Seconds spent waiting for another request's claim (``on_in_progress="wait"``).
    wait_seconds: float | None = None
    #: Seconds the handler ran, for decisions taken after it.
    handler_seconds: float | None = None
    #: A short reason for errors (an exception's class name), never client data.
    error: str | None = None


Listener = Callable[[IdempotencyEvent], None]

_listeners: tuple[Listener, ...] = ()


def listening() -> bool:
    """Whether anyone subscribed: emitters skip building events when not."""
    return bool(_listeners)


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener`` with every event from now on; returns the function that unsubscribes."""
    global _listeners
    _listeners = (*_listeners, listener)

    def unsubscribe() -> None:
        global _listeners
        found = list(_listeners)
        if listener in found:
            found.remove(listener)
            _listeners = tuple(found)

    return unsubscribe


def emit(event: IdempotencyEvent) -> None:
    """Hand ``event`` to every subscriber; one that raises is logged and skipped."""
    for listener in _listeners:
        try:
            listener(event)
        except Exception:
            logger.exception(
                "idempotency event subscriber %r raised",
                listener,
                extra={
                    "idempotency_decision": event.decision.value,
                    "idempotency_source": event.source,
                    "idempotency_key": None if event.key is None else printable(event.key),
                },
            )
