"""A raw ASGI app behind the middleware, for servers running it under trio (Hypercorn -k trio).

Environment: ``REDIS_URL`` (optional: the in-memory store without it), ``REL_LEASE_SECONDS``
(default 0.5). ``POST /slow`` counts its runs and sleeps ``?s`` seconds (anyio: any library);
``GET /runs`` answers the count; ``GET /healthz`` 200.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
)
from idempotent_middleware.persistence.base import BasePersistenceLayer

Message = MutableMapping[str, Any]

runs = 0


async def inner(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    global runs
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        runs += 1
        run = runs
        query = scope.get("query_string", b"").decode()
        seconds = float(query[2:]) if query.startswith("s=") else 0.0
        await anyio.sleep(seconds)
        body, status = json.dumps({"run": run}).encode(), 201
    elif scope["path"] == "/runs":
        body, status = str(runs).encode(), 200
    else:
        body, status = b"ok", 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def make_app(store: BasePersistenceLayer, lease_seconds: float) -> IdempotencyMiddleware:
    return IdempotencyMiddleware(inner, store, IdempotencyConfig(lease_seconds=lease_seconds))


_url = os.environ.get("REDIS_URL")
app = make_app(
    RedisPersistenceLayer(url=_url) if _url else InMemoryPersistenceLayer(),
    float(os.environ.get("REL_LEASE_SECONDS", "0.5")),
)
