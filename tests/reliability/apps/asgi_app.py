"""Starlette app for the process-level reliability tests (crash, disconnect).

Settings come from the environment: ``REDIS_URL`` (store and run counters),
``REL_LEASE_SECONDS`` (default 2). Each handler run is counted in Redis under the request's
Idempotency-Key, and the worker's pid is written there, so a test can find and kill it.

``POST /work`` takes ``{"sleep_first": s, "sleep": s, "fail_first": bool}``: the first run of a
key sleeps ``sleep_first`` (then raises if ``fail_first``), later runs sleep ``sleep``.
``POST /stream`` streams ``chunks`` chunks, ``delay`` seconds apart.
Run: REDIS_URL=redis://127.0.0.1:6379/0 uvicorn tests.reliability.apps.asgi_app:app
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as redis_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware, RedisPersistenceLayer

REDIS_URL = os.environ["REDIS_URL"]
LEASE_SECONDS = float(os.environ.get("REL_LEASE_SECONDS", "2"))

_clients: dict[int, redis_asyncio.Redis] = {}


def counters() -> redis_asyncio.Redis:
    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _clients:
        _clients[loop_id] = redis_asyncio.Redis.from_url(REDIS_URL)
    return _clients[loop_id]


async def _spec(request: Request) -> dict[str, Any] | None:
    """The JSON body, or None when it is not JSON (answered 400, like most APIs do)."""
    try:
        spec = await request.json()
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


def _bad_request() -> Response:
    return JSONResponse({"detail": "body must be a JSON object"}, status_code=400)


async def _start_run(request: Request) -> tuple[str, int]:
    key = request.headers.get("idempotency-key", "")
    r = counters()
    run = int(await r.incr(f"rel:runs:{key}"))
    await r.set(f"rel:pid:{key}", os.getpid())
    return key, run


async def work(request: Request) -> Response:
    spec = await _spec(request)
    if spec is None:
        return _bad_request()
    key, run = await _start_run(request)
    await asyncio.sleep(float(spec.get("sleep_first", 0) if run == 1 else spec.get("sleep", 0)))
    if spec.get("fail_first") and run == 1:
        await counters().rpush(f"rel:failed:{key}", run)
        raise RuntimeError(f"run {run} of {key} fails on purpose")
    await counters().rpush(f"rel:done:{key}", run)
    body = {"key": key, "run": run, "pid": os.getpid(), "token": uuid.uuid4().hex}
    return JSONResponse(body, status_code=201)


async def stream(request: Request) -> Response:
    spec = await _spec(request)
    if spec is None:
        return _bad_request()
    key, run = await _start_run(request)
    chunks, delay = int(spec.get("chunks", 5)), float(spec.get("delay", 0.2))

    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            await asyncio.sleep(delay)
            yield f"chunk {i} of run {run}\n".encode()
        await counters().rpush(f"rel:done:{key}", run)

    return StreamingResponse(body(), status_code=200, media_type="text/plain")


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True, "pid": os.getpid()})


inner = Starlette(
    routes=[
        Route("/work", work, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
app = IdempotencyMiddleware(
    inner,
    persistence_store=RedisPersistenceLayer(url=REDIS_URL),
    config=IdempotencyConfig(lease_seconds=LEASE_SECONDS),
)
