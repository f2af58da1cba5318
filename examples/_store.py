"""The examples' store: in-memory by default, Redis when REDIS_URL is set."""

from __future__ import annotations

import os

from idempotent_middleware import (
    BasePersistenceLayer,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
)


def make_store() -> BasePersistenceLayer:
    url = os.environ.get("REDIS_URL")
    return RedisPersistenceLayer(url=url) if url else InMemoryPersistenceLayer()


def count_execution(store: BasePersistenceLayer, local: list[int]) -> int:
    """Count handler runs: in Redis when configured (shared by all workers), else locally."""
    if isinstance(store, RedisPersistenceLayer):
        return int(store.sync_client().incr("examples:executions"))
    local.append(1)
    return len(local)
