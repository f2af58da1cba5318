"""idempotent-middleware: run a handler once per idempotency key, replay the stored response."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._claim import CurrentClaim, current_claim
from .asgi import IdempotencyMiddleware
from .config import IdempotencyConfig, RouteOptions
from .exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyCachedError,
    IdempotencyConfigurationError,
    IdempotencyCorruptRecordError,
    IdempotencyError,
    IdempotencyInvalidRemainingTimeError,
    IdempotencyInvalidStatusError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyKeyError,
    IdempotencyKeyTooLargeError,
    IdempotencyNoTimeLeftError,
    IdempotencyOutcomeUnknownError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
    IdempotencyRequestTooLargeError,
    IdempotencyStoreFullError,
    IdempotencyUnhashableDataError,
    IdempotencyValidationError,
)
from .function import (
    DataclassSerializer,
    PydanticSerializer,
    idempotent,
    idempotent_function,
)
from .persistence import (
    BasePersistenceLayer,
    DataRecord,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
    SQLitePersistenceLayer,
)
from .wsgi import IdempotencyMiddleware as WSGIIdempotencyMiddleware

if TYPE_CHECKING:
    from .persistence.postgres import PostgresPersistenceLayer


def __getattr__(name: str) -> Any:
    """``PostgresPersistenceLayer`` on first use: the package imports without psycopg."""
    if name == "PostgresPersistenceLayer":
        from .persistence.postgres import PostgresPersistenceLayer

        return PostgresPersistenceLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BasePersistenceLayer",
    "CurrentClaim",
    "DataRecord",
    "DataclassSerializer",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyCachedError",
    "IdempotencyConfig",
    "IdempotencyConfigurationError",
    "IdempotencyCorruptRecordError",
    "IdempotencyError",
    "IdempotencyInvalidRemainingTimeError",
    "IdempotencyInvalidStatusError",
    "IdempotencyItemAlreadyExistsError",
    "IdempotencyItemNotFoundError",
    "IdempotencyKeyError",
    "IdempotencyKeyTooLargeError",
    "IdempotencyMiddleware",
    "IdempotencyNoTimeLeftError",
    "IdempotencyOutcomeUnknownError",
    "IdempotencyOwnershipError",
    "IdempotencyPersistenceLayerError",
    "IdempotencyRequestTooLargeError",
    "IdempotencyStoreFullError",
    "IdempotencyUnhashableDataError",
    "IdempotencyValidationError",
    "InMemoryPersistenceLayer",
    "PostgresPersistenceLayer",
    "PydanticSerializer",
    "RedisPersistenceLayer",
    "RouteOptions",
    "SQLitePersistenceLayer",
    "WSGIIdempotencyMiddleware",
    "current_claim",
    "idempotent",
    "idempotent_function",
]
