"""The store our benchmark apps and the in-process driver run on, chosen by environment.

BENCH_STORE=redis     RedisPersistenceLayer on REDIS_URL (the default)
BENCH_STORE=memory    InMemoryPersistenceLayer (one process only)
BENCH_STORE=sqlite    SQLitePersistenceLayer on the file BENCH_SQLITE (WAL, its defaults)
BENCH_STORE=postgres  PostgresPersistenceLayer on POSTGRES_DSN (the harness creates the table)
"""

import os

from idempotent_middleware import (
    BasePersistenceLayer,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
    SQLitePersistenceLayer,
)


def build_store(kind: str | None = None) -> BasePersistenceLayer:
    """The store ``kind`` names (BENCH_STORE when None), configured from the environment."""
    kind = os.environ.get("BENCH_STORE", "redis") if kind is None else kind
    if kind == "redis":
        return RedisPersistenceLayer(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    if kind == "memory":
        return InMemoryPersistenceLayer()
    if kind == "sqlite":
        return SQLitePersistenceLayer(os.environ["BENCH_SQLITE"])
    if kind == "postgres":
        from idempotent_middleware import PostgresPersistenceLayer  # the postgres extra

        return PostgresPersistenceLayer(dsn=os.environ["POSTGRES_DSN"])
    raise SystemExit(f"unknown store {kind!r} (expected redis, memory, sqlite or postgres)")
