"""The decision core: claim, replay, conflict or execute; then store or release. No I/O.

States and allowed transitions (one key, one execution attempt)::

    START --cache hit--------------------------------------------> REPLAY
    START --PUT--> won ------------------------------------------> EXECUTE
                   lost, other fingerprint ----------------------> MISMATCH (422)
                   lost, record COMPLETED -----------------------> REPLAY
                   lost, IN PROGRESS, reject --------------------> IN_PROGRESS (409)
                   lost, IN PROGRESS, wait --SLEEP--> START (until the wait deadline)
    EXECUTE --result stored--UPDATE--> DONE   (fenced: a lost lease is logged, not written)
    EXECUTE --raised / not storable--DELETE--> DONE (fenced likewise)

A layer whose conflict carries no record (Powertools layers raise a bare
``IdempotencyItemAlreadyExistsError()``) is read with a GET; a record that vanished in between
is claimed again, at most ``_CLAIM_ATTEMPTS`` times, then the claim fails typed (503).

A retry after the first claimant's lease ran out wins the PUT again: Redis expires the
in-progress record by itself (``PX``), the in-memory layer treats it as absent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from ._claim import bind, unbind
from ._labels import printable
from ._observe import fields, store_kind
from ._steps import BACKGROUND, CLAIM, DELETE, GET, PUT, RENEW, SLEEP, UPDATE, Plan, Step
from .exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
    IdempotencyStoreFullError,
)
from .persistence.base import HELD_UNREAD, STATUS_COMPLETED, BasePersistenceLayer, DataRecord

logger = logging.getLogger("idempotent_middleware")

#: Polling while waiting for an in-flight duplicate: start short, back off, never hammer.
_FIRST_POLL = 0.02
_MAX_POLL = 0.5
#: Claims tried for one call when the conflicting record keeps vanishing before it is read.
_CLAIM_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Replay:
    record: DataRecord


@dataclass(frozen=True, slots=True)
class Claimed:
    record: DataRecord


def retry_after(record: DataRecord, default: float) -> float:
    """Seconds until the holder's lease runs out (what a 409's ``Retry-After`` should say)."""
    if record.in_progress_expiry_timestamp is None:
        return default
    remaining = record.in_progress_expiry_timestamp / 1000 - time.time()
    return max(min(remaining, default), 0.0) if remaining > 0 else default


def plan_claim(
    layer: BasePersistenceLayer,
    key: str,
    payload_hash: str,
    *,
    lease_seconds: float,
    expires_after_seconds: float,
    wait_seconds: float = 0.0,
    retry_after_seconds: float = 1.0,
    use_cache: bool = False,
) -> Plan[Replay | Claimed]:
    """Decide replay or execute for ``key``; raise for 422 and 409.

    ``use_cache`` is the caller's own ``use_local_cache``: only a caller that asked for the
    layer's local cache reads it or fills it.
    """
    if use_cache:
        cached = layer._retrieve_from_cache(key)
        if cached is not None:
            layer._validate_payload(payload_hash, cached)
            return Replay(cached)
    deadline = time.monotonic() + wait_seconds
    poll = _FIRST_POLL
    vanished = 0
    # A layer class that answers a claim with what holds the key (``_claim_record``: every
    # ``BasePersistenceLayer``) is asked so, and a replay costs no exception; anything else
    # (a duck-typed wrapper) gets the PUT and raises ``IdempotencyItemAlreadyExistsError``.
    # Looked up on the class: a wrapper delegating attributes must not reach its inner layer.
    claim_op = CLAIM if getattr(type(layer), "_claim_record", None) is not None else PUT
    while True:
        claim = layer.new_inprogress_record(key, payload_hash, lease_seconds, expires_after_seconds)
        try:
            found = yield Step(claim_op, claim)
            if claim_op is PUT:  # returns nothing by contract: whatever it did return, won
                found = None
        except IdempotencyItemAlreadyExistsError as exc:
            found = HELD_UNREAD if exc.old_data_record is None else exc.old_data_record
        except IdempotencyStoreFullError:
            raise  # a refusal, not an ambiguous write: nothing to give back
        except IdempotencyPersistenceLayerError:
            # Ambiguous: a timed-out claim may have been applied. Nothing runs under it, so
            # give it back (fenced by its owner) rather than block the key for a lease; in
            # the background, so that a stalled store costs this request one timeout only.
            yield Step(BACKGROUND, Step(DELETE, claim))
            raise
        if found is None:
            # The handler runs in this context next: it may record its execution in its own
            # transaction (``current_claim()``) until the claim is completed or released.
            bind(layer, claim, expires_after_seconds)
            return Claimed(claim)
        existing = found if isinstance(found, DataRecord) else None
        if existing is None:  # the layer did not say what it found: read it (the seed's way)
            try:
                existing = yield Step(GET, key)
            except IdempotencyItemNotFoundError:
                existing = None
        if existing is None:  # gone before it could be read: claim again, a bounded number
            vanished += 1
            if vanished >= _CLAIM_ATTEMPTS:
                raise IdempotencyPersistenceLayerError(
                    f"claim of {key!r} did not settle: the conflicting record vanished "
                    f"{vanished} times before it could be read"
                )
            continue
        layer._validate_payload(payload_hash, existing)
        if existing.status == STATUS_COMPLETED:
            if use_cache:
                layer._save_to_cache(existing)
            return Replay(existing)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise IdempotencyAlreadyInProgressError(
                retry_after=retry_after(existing, retry_after_seconds)
            )
        yield Step(SLEEP, min(poll, remaining))
        poll = min(poll * 2, _MAX_POLL)


def plan_complete(
    layer: BasePersistenceLayer,
    claim: DataRecord,
    response_data: bytes | None,
    expires_after: float,
    *,
    use_cache: bool = False,
    background: bool = True,
) -> Plan[DataRecord | None]:
    """Store the result under the claim; a lost lease is logged and leaves the new owner be.

    With ``background=False`` a store error is raised with the record to write as its
    ``pending_record``: the HTTP adapters hand it to the lease, which keeps the claim alive and
    retries the write (``plan_store``) instead of letting the key free for a second run.

    ``response_data`` None records "executed, outcome unknown" (an interrupted run). A store
    error is retried once in the background (fenced, so harmless if the key moved on), then
    raised: the claim is never left neither completed nor released for want of one attempt.
    """
    unbind(claim)
    record = completion_record(layer, claim, response_data, expires_after)
    try:
        yield Step(UPDATE, record)
    except IdempotencyOwnershipError:
        logger.warning(
            "lease lost for %s: another execution owns the key; result not stored",
            printable(claim.idempotency_key),
            extra=fields(decision="lease_lost", key=claim.idempotency_key, store=store_kind(layer)),
        )
        return None
    except IdempotencyPersistenceLayerError as exc:
        if background:
            yield Step(BACKGROUND, Step(UPDATE, record))
        exc.pending_record = record  # type: ignore[attr-defined]
        raise
    if use_cache:
        layer._save_to_cache(record)
    return record


def completion_record(
    layer: BasePersistenceLayer, claim: DataRecord, response_data: bytes | None, expires: float
) -> DataRecord:
    """The record that completes ``claim`` (``response_data`` None: outcome unknown)."""
    if response_data is None:
        return layer.outcome_unknown_record(claim, expires)
    return layer.completed_record(claim, response_data, expires)


def plan_store(record: DataRecord) -> Plan[bool]:
    """Write a completion again (a lease retrying it); False when another owner has the key."""
    try:
        yield Step(UPDATE, record)
    except IdempotencyOwnershipError:
        return False
    return True


def plan_release(layer: BasePersistenceLayer, claim: DataRecord) -> Plan[bool]:
    """Give the key back (handler raised or response not storable), fenced by owner; False
    when another execution owned it (the lease was lost).

    A store error is retried once in the background (fenced), then raised.
    """
    unbind(claim)
    try:
        yield Step(DELETE, claim)
    except IdempotencyPersistenceLayerError:
        layer._delete_from_cache(claim.idempotency_key)
        yield Step(BACKGROUND, Step(DELETE, claim))
        raise
    except IdempotencyOwnershipError:
        logger.warning(
            "lease lost for %s: not releasing the new owner's claim",
            printable(claim.idempotency_key),
            extra=fields(decision="lease_lost", key=claim.idempotency_key, store=store_kind(layer)),
        )
        layer._delete_from_cache(claim.idempotency_key)
        return False
    layer._delete_from_cache(claim.idempotency_key)
    return True


def plan_renew(claim: DataRecord, lease_seconds: float) -> Plan[bool]:
    """Extend the lease (or take the key back if it lapsed and is free); False when another
    owner took it. Not logged here: the renewer knows whether the handler still holds it."""
    renewed = replace(
        claim,
        in_progress_expiry_timestamp=BasePersistenceLayer._get_lease_expiry_millis(lease_seconds),
    )
    try:
        yield Step(RENEW, renewed)
    except IdempotencyOwnershipError:
        return False
    return True
