"""The store our benchmark apps run on, chosen by environment (shared by the ASGI and WSGI apps).

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

STORE = os.environ.get("BENCH_STORE", "redis")


def build_store() -> BasePersistenceLayer:
    if STORE == "redis":
        return RedisPersistenceLayer(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    if STORE == "memory":
        return InMemoryPersistenceLayer()
    if STORE == "sqlite":
        return SQLitePersistenceLayer(os.environ["BENCH_SQLITE"])
    if STORE == "postgres":
        from idempotent_middleware import PostgresPersistenceLayer  # the postgres extra

        return PostgresPersistenceLayer(dsn=os.environ["POSTGRES_DSN"])
    raise SystemExit(f"unknown BENCH_STORE={STORE!r} (expected redis, memory, sqlite or postgres)")
