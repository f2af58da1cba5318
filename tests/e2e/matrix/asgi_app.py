"""The matrix app for ASGI servers: Starlette behind ``IdempotencyMiddleware`` on Redis.

Only anyio primitives, so the same app runs on asyncio and on trio (Hypercorn ``-k trio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from idempotent_middleware import IdempotencyMiddleware
from tests.e2e.matrix.common import (
    CONFIG,
    SLOW_SECONDS,
    count_run,
    make_store,
    order_body,
    slow_body,
    stream_chunk,
)

KEY = "idempotency-key"


async def orders(request: Request) -> Response:
    status, body = order_body(request.headers.get(KEY), await request.body())
    return Response(body, status_code=status, media_type="application/json")


async def slow(request: Request) -> Response:
    key = request.headers.get(KEY)
    await request.body()
    run = count_run(key)  # counted as it starts: a run its server cancels counts too
    await anyio.sleep(float(request.query_params.get("seconds", SLOW_SECONDS)))
    return Response(slow_body(key, run), 202, media_type="application/json")


async def stream(request: Request) -> StreamingResponse:
    count_run(request.headers.get(KEY))
    chunks = int(request.query_params.get("chunks", "8"))
    delay = float(request.query_params.get("delay", "0"))

    async def body() -> AsyncIterator[bytes]:
        for index in range(chunks):
            yield stream_chunk(index)
            if delay:
                await anyio.sleep(delay)

    return StreamingResponse(body(), media_type="application/octet-stream")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/orders", orders, methods=["POST"]),
        Route("/slow", slow, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    middleware=[Middleware(IdempotencyMiddleware, persistence_store=make_store(), config=CONFIG)],
)
