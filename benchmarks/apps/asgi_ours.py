"""Our ASGI middleware around the shared endpoints.

One module serves three variants, chosen by environment so the harness can start
them side by side:
  BENCH_STORE=redis|memory   RedisPersistenceLayer (REDIS_URL) or InMemoryPersistenceLayer
  BENCH_LOCAL_CACHE=0|1      IdempotencyConfig(use_local_cache=...)
"""

import os

from common_asgi import build_app

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
STORE = os.environ.get("BENCH_STORE", "redis")
LOCAL_CACHE = os.environ.get("BENCH_LOCAL_CACHE", "0") == "1"


def _store() -> RedisPersistenceLayer | InMemoryPersistenceLayer:
    if STORE == "redis":
        return RedisPersistenceLayer(url=REDIS_URL)
    if STORE == "memory":
        return InMemoryPersistenceLayer()
    raise SystemExit(f"unknown BENCH_STORE={STORE!r} (expected redis or memory)")


app = build_app()
app.add_middleware(
    IdempotencyMiddleware,
    persistence_store=_store(),
    config=IdempotencyConfig(use_local_cache=LOCAL_CACHE),
)
