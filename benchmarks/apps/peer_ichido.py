"""Peer: ichido 0.1.0 as app-wide ASGI middleware on Redis (SET NX EX, then SET).

The Redis client decodes replies to str because ichido parses the stored JSON text.
"""

import os

import redis.asyncio as aioredis
from common_asgi import build_app
from ichido import IchidoConfig, IchidoMiddleware, RedisIdempotencyStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

app = build_app()
app.add_middleware(
    IchidoMiddleware,
    store=RedisIdempotencyStore(
        aioredis.from_url(REDIS_URL, decode_responses=True), prefix="bench:ichido:", ttl=86400
    ),
    config=IchidoConfig(),
)
