"""Shared fixtures: a real redis-server per session, and the persistence layers under test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
)
from tests.redis_servers import RedisProcess, redis_binary, start_redis
from tests.redis_topologies import (
    ClusterTopology,
    SentinelTopology,
    cluster_layer,
    sentinel_layer,
    start_cluster,
    start_sentinel,
)

REQUIRE_REDIS = os.environ.get("REQUIRE_REDIS") == "1"


def _no_redis(reason: str) -> None:
    if REQUIRE_REDIS:
        pytest.fail(f"REQUIRE_REDIS=1 but the real-Redis tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A real redis-server on a free loopback port, no persistence, for the whole session."""
    if redis_binary() is None:
        _no_redis("redis-server is not installed")
    try:
        server = start_redis()
    except Exception as exc:  # pragma: no cover - depends on the machine
        _no_redis(f"redis-server did not start: {exc}")
        raise
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    """A real 3-master Redis Cluster for the session: routing and per-node script caches."""
    if redis_binary() is None:
        _no_redis("redis-server is not installed")
    try:
        topology = start_cluster()
    except Exception as exc:  # pragma: no cover - depends on the machine
        _no_redis(f"the Redis Cluster did not start: {exc}")
        raise
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    """Master + replica + Sentinel for the session: clients that discover the master."""
    if redis_binary() is None:
        _no_redis("redis-server is not installed")
    try:
        topology = start_sentinel()
    except Exception as exc:  # pragma: no cover - depends on the machine
        _no_redis(f"the Sentinel topology did not start: {exc}")
        raise
    yield topology
    topology.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    redis_server.cli("FLUSHALL")
    return redis_server.url


def make_layer(kind: str, request: pytest.FixtureRequest) -> BasePersistenceLayer:
    if kind == "memory":
        return InMemoryPersistenceLayer()
    if kind == "fakeredis":
        import fakeredis

        server = fakeredis.FakeServer()
        return RedisPersistenceLayer(
            client=fakeredis.FakeRedis(server=server),
            async_client=fakeredis.FakeAsyncRedis(server=server),
        )
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return RedisPersistenceLayer(url=url)
    if kind == "cluster":
        cluster: ClusterTopology = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        return cluster_layer(cluster)
    if kind == "sentinel":
        sentinel: SentinelTopology = request.getfixturevalue("redis_sentinel")
        sentinel.flushall()
        return sentinel_layer(sentinel)
    raise ValueError(kind)


LAYER_KINDS = ["memory", "fakeredis", "redis", "cluster", "sentinel"]


@pytest.fixture(params=LAYER_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every persistence layer the suite must pass on."""
    store = make_layer(request.param, request)
    yield store
    if isinstance(store, RedisPersistenceLayer):
        store.close()
