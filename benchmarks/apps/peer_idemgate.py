"""Peer: idemgate 0.1.0, a per-route FastAPI integration on Redis.

idemgate is not middleware: routes must use its IdempotencyRoute class and the
endpoint must carry @idempotent; the store lives on app.state and must be created
inside the running loop (hence the lifespan). It needs redis-py < 8, which is why
each peer runs from its own virtualenv.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common_asgi import build_app
from fastapi import FastAPI
from idemgate import IdempotencyConfig, IdempotencyRoute, idempotent
from idemgate.redis_store import RedisAcquirer
from redis.asyncio import Redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    client = Redis.from_url(REDIS_URL, decode_responses=False)  # idemgate expects bytes
    app.state.idempotency_store = RedisAcquirer(client, key_prefix="bench:idemgate")
    try:
        yield
    finally:
        await client.aclose()


app = build_app(
    lifespan=lifespan,
    route_class=IdempotencyRoute,
    protect=idempotent(config=IdempotencyConfig(ttl_seconds=86400)),
)
