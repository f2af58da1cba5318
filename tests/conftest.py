"""Shared fixtures: a real redis-server per session, and the persistence layers under test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
    SQLitePersistenceLayer,
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
T = TypeVar("T")


def _no_redis(reason: str) -> None:
    if REQUIRE_REDIS:
        pytest.fail(f"REQUIRE_REDIS=1 but the real-Redis tests cannot run: {reason}")
    pytest.skip(reason)


def _start_or_skip(what: str, start: Callable[[], T]) -> T:
    """Start a real server topology; skip without redis-server, fail under REQUIRE_REDIS=1."""
    if redis_binary() is None:
        _no_redis("redis-server is not installed")
    try:
        return start()
    except Exception as exc:  # pragma: no cover - depends on the machine
        _no_redis(f"{what} did not start: {exc}")
        raise


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A real redis-server on a free loopback port, no persistence, for the whole session."""
    server = _start_or_skip("redis-server", start_redis)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    """A real 3-master Redis Cluster for the session: routing and per-node script caches."""
    topology = _start_or_skip("the Redis Cluster", start_cluster)
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    """Master + replica + Sentinel for the session: clients that discover the master."""
    topology = _start_or_skip("the Sentinel topology", start_sentinel)
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
    if kind == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        return SQLitePersistenceLayer(tmp_path / "idempotency.sqlite3")
    raise ValueError(kind)


LAYER_KINDS = ["memory", "fakeredis", "redis", "cluster", "sentinel", "sqlite"]


@pytest.fixture(params=LAYER_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every persistence layer the suite must pass on."""
    store = make_layer(request.param, request)
    yield store
    if isinstance(store, (RedisPersistenceLayer, SQLitePersistenceLayer)):
        store.close()
