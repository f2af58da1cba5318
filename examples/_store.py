"""The examples' store: in-memory by default, Redis when REDIS_URL is set."""

from __future__ import annotations

import os

from idempotent_middleware import (
    BasePersistenceLayer,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
)


def make_store() -> BasePersistenceLayer:
    """REDIS_URL=redis://host:port/db, or redis+cluster://host:port for a Redis Cluster."""
    url = os.environ.get("REDIS_URL")
    if not url:
        return InMemoryPersistenceLayer()
    if url.startswith("redis+cluster://"):
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
        from redis.cluster import RedisCluster

        plain = "redis://" + url.removeprefix("redis+cluster://")
        return RedisPersistenceLayer(
            client=RedisCluster.from_url(plain),
            async_client_factory=lambda: AsyncRedisCluster.from_url(plain),
        )
    return RedisPersistenceLayer(url=url)


def count_execution(store: BasePersistenceLayer, local: list[int]) -> int:
    """Count handler runs: in Redis when configured (shared by all workers), else locally."""
    if isinstance(store, RedisPersistenceLayer):
        return int(store.sync_client().incr("examples:executions"))
    local.append(1)
    return len(local)
