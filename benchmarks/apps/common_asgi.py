"""Endpoints shared by every ASGI benchmark app.

Every app (bare, ours, peers) serves the same handlers so that the only
difference measured is the idempotency layer wrapped around them.
"""

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from stream_pattern import chunk, chunk_count


class Order(BaseModel):
    sku: str
    qty: int


def _unchanged(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    return endpoint


def build_app(
    *,
    lifespan: Any = None,
    route_class: type | None = None,
    protect: Callable[[Callable[..., Any]], Callable[..., Any]] = _unchanged,
) -> FastAPI:
    """Build the FastAPI app.

    ``route_class`` and ``protect`` exist for per-route libraries (idemgate), which
    need their route class installed before routes are declared and a decorator on
    the protected endpoint.
    """
    app = FastAPI(lifespan=lifespan)
    router: APIRouter = app.router
    if route_class is not None:
        router.route_class = route_class
    executions = itertools.count(1)
    stats = {"executions": 0}

    async def create_order(order: Order) -> dict[str, Any]:
        stats["executions"] = next(executions)
        return {"order_id": uuid.uuid4().hex, "sku": order.sku, "qty": order.qty}

    async def slow(order: Order, ms: int = 2000) -> dict[str, Any]:
        # Holds the request open so a duplicate can arrive while it is in flight.
        await asyncio.sleep(ms / 1000)
        return {"sku": order.sku, "slept_ms": ms}

    async def stream(mb: int = 100) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for index in range(chunk_count(mb)):
                yield chunk(index)

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    async def get_stats() -> dict[str, Any]:
        return stats

    app.post("/orders", status_code=201)(protect(create_order))
    app.post("/slow", status_code=201)(slow)
    app.post("/stream")(stream)
    app.get("/healthz")(healthz)
    app.get("/stats")(get_stats)
    return app
