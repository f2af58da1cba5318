"""Persistence layers: where idempotency records live."""

from __future__ import annotations

from .base import BasePersistenceLayer, DataRecord
from .memory import InMemoryPersistenceLayer
from .redis import RedisPersistenceLayer
from .sqlite import SQLitePersistenceLayer

__all__ = [
    "BasePersistenceLayer",
    "DataRecord",
    "InMemoryPersistenceLayer",
    "RedisPersistenceLayer",
    "SQLitePersistenceLayer",
]
