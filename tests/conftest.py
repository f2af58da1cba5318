"""Shared fixtures: real redis-server and PostgreSQL per session, and the layers under test."""

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
from tests.pg_servers import PostgresProcess, pg_bindir, start_postgres
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresProcess]:
    """A real PostgreSQL (initdb + pg_ctl in a temporary directory) for the whole session.

    Skipped without the server binaries, a failure under REQUIRE_REDIS=1 (CI), like Redis.
    """
    if pg_bindir() is None:
        _no_redis("the PostgreSQL server (initdb, pg_ctl) is not installed")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _no_redis("psycopg is not installed (the postgres extra)")
    try:
        server = start_postgres()
    except Exception as exc:  # pragma: no cover - depends on the machine
        _no_redis(f"PostgreSQL did not start: {exc}")
        raise
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresProcess) -> str:
    """The session's PostgreSQL with an empty idempotency table."""
    import psycopg

    from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

    layer = PostgresPersistenceLayer(dsn=postgres_server.dsn)
    layer.create_schema()
    layer.close()
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE idempotency_records")
    return postgres_server.dsn


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
    if kind == "postgres":
        from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

        dsn: str = request.getfixturevalue("postgres_dsn")
        return PostgresPersistenceLayer(dsn=dsn)
    raise ValueError(kind)


LAYER_KINDS = ["memory", "fakeredis", "redis", "cluster", "sentinel", "sqlite", "postgres"]


@pytest.fixture(params=LAYER_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every persistence layer the suite must pass on."""
    store = make_layer(request.param, request)
    yield store
    if isinstance(store, (RedisPersistenceLayer, SQLitePersistenceLayer)):
        store.close()
    close = getattr(store, "close", None)
    if request.param == "postgres" and close is not None:
        close()
