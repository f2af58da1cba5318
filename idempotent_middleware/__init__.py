"""idempotent-middleware: run a handler once per idempotency key, replay the stored response."""

from __future__ import annotations

from .asgi import IdempotencyMiddleware
from .config import IdempotencyConfig, RouteOptions
from .exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigurationError,
    IdempotencyCorruptRecordError,
    IdempotencyError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyKeyError,
    IdempotencyNoTimeLeftError,
    IdempotencyOutcomeUnknownError,
    IdempotencyOwnershipError,
    IdempotencyPersistenceLayerError,
    IdempotencyRequestTooLargeError,
    IdempotencyStoreFullError,
    IdempotencyValidationError,
)
from .function import idempotent_function
from .persistence import (
    BasePersistenceLayer,
    DataRecord,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
)
from .wsgi import IdempotencyMiddleware as WSGIIdempotencyMiddleware

__all__ = [
    "BasePersistenceLayer",
    "DataRecord",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyConfig",
    "IdempotencyConfigurationError",
    "IdempotencyCorruptRecordError",
    "IdempotencyError",
    "IdempotencyItemAlreadyExistsError",
    "IdempotencyItemNotFoundError",
    "IdempotencyKeyError",
    "IdempotencyMiddleware",
    "IdempotencyNoTimeLeftError",
    "IdempotencyOutcomeUnknownError",
    "IdempotencyOwnershipError",
    "IdempotencyPersistenceLayerError",
    "IdempotencyRequestTooLargeError",
    "IdempotencyStoreFullError",
    "IdempotencyValidationError",
    "InMemoryPersistenceLayer",
    "RedisPersistenceLayer",
    "RouteOptions",
    "WSGIIdempotencyMiddleware",
    "idempotent_function",
]
