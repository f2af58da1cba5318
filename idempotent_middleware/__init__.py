"""idempotent-middleware: run a handler once per idempotency key, replay the stored response."""

from __future__ import annotations

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

__all__ = [
    "BasePersistenceLayer",
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
    "PydanticSerializer",
    "RedisPersistenceLayer",
    "RouteOptions",
    "SQLitePersistenceLayer",
    "WSGIIdempotencyMiddleware",
    "idempotent",
    "idempotent_function",
]
