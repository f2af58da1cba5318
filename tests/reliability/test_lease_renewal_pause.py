"""Item 2: one failed renewal must not cost the lease.

Real redis-server, lease 2 s, a 5 s handler. ``CLIENT PAUSE 700 WRITE`` is issued just before
the first renewal is due, and the layer's socket timeout (0.2 s) is shorter than the pause, so
that renewal fails. The renewer must retry before the lease ends: a duplicate sent after the
original lease would have run out still gets 409, and the handler runs exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    RedisPersistenceLayer,
    WSGIIdempotencyMiddleware,
)

pytestmark = pytest.mark.redis

LEASE = 2.0
HANDLER_SECONDS = 5.0
PAUSE_AT = 0.9  # after the handler started; the first renewal is due at half a lease
#: Sent after the first lease would have run out without a successful renewal.
DUPLICATES_AT = (2.6, 3.6)


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisPersistenceLayer]:
    layer = RedisPersistenceLayer(url=redis_url, socket_timeout=0.2)
    yield layer
    layer.close()


@pytest.fixture
def pause(redis_url: str) -> Iterator[redis.Redis]:
    admin = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield admin
    admin.execute_command("CLIENT", "UNPAUSE")
    admin.close()


def _pause_writes(admin: redis.Redis) -> None:
    admin.execute_command("CLIENT", "PAUSE", "700", "WRITE")


@pytest.mark.timeout(60)
def test_item2_asgi_renewal_survives_a_paused_redis(
    store: RedisPersistenceLayer, pause: redis.Redis
) -> None:
    runs: list[float] = []

    async def handler(request: Request) -> JSONResponse:
        runs.append(time.monotonic())
        await asyncio.sleep(HANDLER_SECONDS)
        return JSONResponse({"run": len(runs)}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/pay", handler, methods=["POST"])]),
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=LEASE),
    )

    async def scenario() -> tuple[int, list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=30
        ) as client:

            async def post() -> httpx.Response:
                return await client.post(
                    "/pay", json={"amount": 5}, headers={"Idempotency-Key": "pause-asgi"}
                )

            first = asyncio.create_task(post())
            while not runs:
                await asyncio.sleep(0.005)
            started = runs[0]
            await asyncio.sleep(max(0.0, started + PAUSE_AT - time.monotonic()))
            await asyncio.to_thread(_pause_writes, pause)
            duplicates = []
            for at in DUPLICATES_AT:
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                duplicates.append((await post()).status_code)
            return (await first).status_code, duplicates

    status, duplicates = asyncio.run(scenario())
    assert len(runs) == 1, f"the handler ran {len(runs)} times"
    assert duplicates == [409, 409]
    assert status == 201


@pytest.mark.timeout(60)
def test_item2_wsgi_renewal_survives_a_paused_redis(
    store: RedisPersistenceLayer, pause: redis.Redis
) -> None:
    runs: list[float] = []
    flask_app = Flask(__name__)

    @flask_app.post("/pay")
    def pay() -> tuple[dict[str, int], int]:
        runs.append(time.monotonic())
        time.sleep(HANDLER_SECONDS)
        return {"run": len(runs)}, 201

    app = WSGIIdempotencyMiddleware(
        flask_app, persistence_store=store, config=IdempotencyConfig(lease_seconds=LEASE)
    )
    statuses: list[int] = []

    def post() -> int:
        response = Client(app).post(
            "/pay", json={"amount": 5}, headers={"Idempotency-Key": "pause-wsgi"}
        )
        return response.status_code

    first = threading.Thread(target=lambda: statuses.append(post()))
    first.start()
    deadline = time.monotonic() + 10
    while not runs and time.monotonic() < deadline:
        time.sleep(0.005)
    assert runs, "the first request never reached the handler"
    started = runs[0]
    time.sleep(max(0.0, started + PAUSE_AT - time.monotonic()))
    _pause_writes(pause)
    duplicates = []
    for at in DUPLICATES_AT:
        time.sleep(max(0.0, started + at - time.monotonic()))
        duplicates.append(post())
    first.join(30)
    assert len(runs) == 1, f"the handler ran {len(runs)} times"
    assert duplicates == [409, 409]
    assert statuses == [201]
