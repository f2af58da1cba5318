"""Typed errors for Python callers; the HTTP adapters map each one to an RFC 9457 problem."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._error_base import IdempotencyCorruptRecordError as IdempotencyCorruptRecordError
from ._error_base import IdempotencyError as IdempotencyError
from ._error_base import IdempotencyInvalidStatusError as IdempotencyInvalidStatusError
from ._error_base import IdempotencyPersistenceLayerError as IdempotencyPersistenceLayerError

if TYPE_CHECKING:
    from .persistence.record import DataRecord


class IdempotencyCachedError(IdempotencyError):
    """Replay of an exception stored by ``cache_exceptions`` whose class cannot be rebuilt.

    ``type_name`` is the original's ``module.QualName``, ``message`` its ``str()``.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class IdempotencyKeyError(IdempotencyError):
    """The idempotency key is required but missing, or it is malformed."""


class IdempotencyKeyTooLargeError(IdempotencyKeyError):
    """The key expression would build a value past its bound (``powertools_base64_gzip`` of
    data that decompresses to more than ``max_request_body_bytes``): no usable key (HTTP
    400)."""


class IdempotencyUnhashableDataError(IdempotencyKeyError, TypeError):
    """The data holds a value with no stable JSON form (a plain object: its ``str()`` names a
    memory address, which a later object reuses, so two callers would share one key)."""


class IdempotencyValidationError(IdempotencyError):
    """The key was used before with another payload fingerprint (HTTP 422)."""


class IdempotencyAlreadyInProgressError(IdempotencyError):
    """Another execution holds the key's lease (HTTP 409 with Retry-After)."""

    def __init__(self, message: str = "", *, retry_after: float = 1.0) -> None:
        super().__init__(message or "request with this idempotency key is already in progress")
        self.retry_after = retry_after


class IdempotencyItemAlreadyExistsError(IdempotencyError):
    """Raised by ``_put_record`` when a live record holds the key (the seed's name).

    Unlike the seed, it always carries the record it found, so the caller decides between
    replay, 409 and 422 without a second round trip.
    """

    def __init__(self, old_data_record: DataRecord | None = None) -> None:
        super().__init__("idempotency record already exists")
        self.old_data_record = old_data_record


class IdempotencyItemNotFoundError(IdempotencyError):
    """Raised by ``_get_record`` when no live record holds the key."""


class IdempotencyOwnershipError(IdempotencyError):
    """A completion, release or renewal came from an owner that no longer holds the key.

    The lease ran out and another execution claimed the key; the store refused the write
    (fencing), so the newer owner's record survives.
    """


class IdempotencyRequestTooLargeError(IdempotencyError):
    """A keyed request body exceeds ``max_request_body_bytes`` (HTTP 413)."""


class IdempotencyStoreFullError(IdempotencyPersistenceLayerError):
    """The store is full of live records and refuses new claims (HTTP 503).

    Live claims and unexpired results are never evicted to make room: evicting either would let
    a retry run the handler a second time.
    """


class IdempotencyOutcomeUnknownError(IdempotencyError):
    """The first execution under this key was interrupted after it started.

    It was cancelled or interrupted (``KeyboardInterrupt``, ``SystemExit``,
    ``asyncio.CancelledError``) and may have had its side effects; it recorded no result. Retries
    get this error instead of a second run.
    """


class IdempotencyNoTimeLeftError(IdempotencyError):
    """``remaining_time_in_millis`` was under a millisecond: no time is left to run under a
    lease (a claim written with it would already have expired)."""


class IdempotencyInvalidRemainingTimeError(IdempotencyError, ValueError):
    """The invocation's remaining time is not a finite number of milliseconds (``inf``,
    ``NaN``, not a number): no lease can be taken from it, so nothing is claimed or run."""


class IdempotencyConfigurationError(IdempotencyPersistenceLayerError, ValueError):
    """The store was configured in a way that cannot work (e.g. a Redis client that decodes
    responses: records are bytes). Raised at construction where possible, else at first use,
    where the middlewares answer 503 like any store that refuses work."""


class IdempotencyScopeError(IdempotencyError):
    """A ``scope`` hook cannot tell whose request this is (e.g. ``user_scope`` with no
    ``scope["user"]``: the authentication middleware runs after ours). Nothing is claimed:
    an unscoped key would let one user receive another's response. The HTTP adapters answer
    a 503 problem and log it: it is a set-up error, not the client's."""


class IdempotencyScopeRefusedError(IdempotencyScopeError):
    """The caller is anonymous and the hook refuses anonymous keyed requests (``user_scope``
    ``anonymous="refuse"``, ``credential_scope(required=True)``): answered with a 401
    problem (RFC 9110 section 15.5.2), nothing claimed."""
