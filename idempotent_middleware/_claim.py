"""The claim the running handler executes under, for completion inside its own transaction.

The core (``_core.plan_claim``) binds a :class:`CurrentClaim` to the running context (thread
or asyncio task) when it wins a key, and ``plan_complete`` / ``plan_release`` end it. While it
is live, the handler can call ``current_claim().record_executed(conn)`` on its own database
connection: the store writes "executed, outcome unknown" (fenced by the claim's owner) in the
handler's transaction, so it commits or rolls back with the business writes. Once that
committed, no retry runs the handler again, even if the process dies before the response is
stored: retries get the response, or the "not replayable" answer. Only stores that share the
caller's database implement it (PostgreSQL).
"""

from __future__ import annotations

import functools
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .persistence.base import BasePersistenceLayer, DataRecord


class CurrentClaim:
    """A live claim: the key, and the way to record its execution on the caller's connection."""

    __slots__ = ("__weakref__", "_active", "_parent", "expires_after_seconds", "layer", "record")

    def __init__(
        self,
        layer: BasePersistenceLayer,
        record: DataRecord,
        expires_after_seconds: float,
        parent: CurrentClaim | None,
    ) -> None:
        self.layer = layer
        self.record = record
        self.expires_after_seconds = expires_after_seconds
        self._active = True
        self._parent = parent

    @property
    def idempotency_key(self) -> str:
        return self.record.idempotency_key

    @property
    def active(self) -> bool:
        return self._active

    def _check(self) -> None:
        if not self._active:
            from .exceptions import IdempotencyOwnershipError

            raise IdempotencyOwnershipError(self.record.idempotency_key)

    def record_executed(self, connection: Any) -> None:
        """Record, in ``connection``'s open transaction, that this execution happened.

        Call it after the business writes and before the commit; again is a no-op. Raises
        ``IdempotencyOwnershipError`` if the claim is no longer this execution's (its lease was
        lost and another execution took the key), ``IdempotencyConfigurationError`` when the
        connection is not in a transaction (autocommit: the marker would commit alone) or
        cannot see the idempotency table: roll the transaction back then.
        """
        self._check()
        self.layer.record_executed(connection, self.record, self.expires_after_seconds)

    async def record_executed_async(self, connection: Any) -> None:
        """``record_executed`` on a psycopg ``AsyncConnection``."""
        self._check()
        await self.layer.record_executed_async(connection, self.record, self.expires_after_seconds)


_current: ContextVar[CurrentClaim | None] = ContextVar("idempotency_current_claim", default=None)
#: Live claims by owner token, so that a completion running in another context (a background
#: task, the lease's thread) still ends the claim the handler's context holds. Weak: a claim
#: nobody completes (its context gone) must not stay here. A dict of ``weakref.ref`` with a
#: callback, not a ``WeakValueDictionary`` (a quarter of its cost per claim); each operation
#: is a single dict call, atomic without a lock (so no lock to renew after a fork).
_live: dict[bytes, weakref.ref[CurrentClaim]] = {}


def _forget(owner: bytes, ref: weakref.ref[CurrentClaim]) -> None:
    """A claim was collected unbound: drop its entry (unless the owner was bound anew)."""
    if _live.get(owner) is ref:
        _live.pop(owner, None)


def current_claim() -> CurrentClaim | None:
    """The claim the running handler executes under, or None outside one.

    Set by the HTTP middlewares and ``idempotent_function`` while the handler runs; an inner
    ``idempotent_function`` call has its own claim, and the outer one is current again after.
    """
    claim = _current.get()
    while claim is not None and not claim._active:
        claim = claim._parent
    return claim


def bind(layer: BasePersistenceLayer, record: DataRecord, expires_after_seconds: float) -> None:
    """Make ``record`` the current claim of this context (the core calls it on a won claim)."""
    claim = CurrentClaim(layer, record, expires_after_seconds, current_claim())
    owner = record.owner
    _live[owner] = weakref.ref(claim, functools.partial(_forget, owner))
    _current.set(claim)


def unbind(record: DataRecord) -> None:
    """End the claim of ``record`` (completed or released), wherever it was bound."""
    ref = _live.pop(record.owner, None)
    claim = None if ref is None else ref()
    if claim is None:
        return
    claim._active = False
    if _current.get() is claim:
        _current.set(current_claim())


__all__ = ["CurrentClaim", "current_claim"]
