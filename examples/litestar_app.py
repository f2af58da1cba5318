"""Litestar with the native integration: a plugin, options in each handler's ``opt``.

Same endpoints as ``fastapi_app.py``.

Run:  uvicorn examples.litestar_app:app            (in-memory store, one process)
      REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.litestar_app:app --workers 4
Try:  curl -i -X POST localhost:8000/orders -H 'Idempotency-Key: k1' \
           -H 'content-type: application/json' -d '{"sku": "abc", "qty": 1}'

The plugin's middleware runs around each route handler (after routing), so requests for
unknown paths (404) never reach it; every matched route does, with its handler's ``opt``.
An invalid body is rejected by Litestar's own validation (400), inside the middleware.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Annotated

from litestar import Litestar, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from examples._store import count_execution, make_store
from idempotent_middleware import IdempotencyConfig, RouteOptions
from idempotent_middleware.litestar import IdempotencyPlugin

store = make_store()
_runs: list[int] = []


@dataclass
class Order:
    sku: str
    qty: int


#: The request body, parsed as JSON (``JSONBody[Order]`` in recent Litestar versions).
OrderBody = Annotated[Order, Body(media_type=RequestEncodingType.JSON)]


@post("/orders", status_code=201)
async def create_order(data: OrderBody) -> dict[str, object]:
    run = count_execution(store, _runs)
    return {"order_id": uuid.uuid4().hex, "sku": data.sku, "qty": data.qty, "run": run}


# Payments must carry a key, and their records live a week.
@post(
    "/payments",
    status_code=201,
    opt={
        "idempotency": RouteOptions(
            raise_on_no_idempotency_key=True, expires_after_seconds=7 * 86400
        )
    },
)
async def pay(data: OrderBody) -> dict[str, object]:
    return {"payment_id": uuid.uuid4().hex, "amount": data.qty}


@post("/slow", status_code=202)
async def slow(data: OrderBody) -> dict[str, object]:
    await asyncio.sleep(1.0)
    return {"job_id": uuid.uuid4().hex, "run": count_execution(store, _runs)}


@get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


app = Litestar(
    route_handlers=[create_order, pay, slow, healthz],
    plugins=[
        IdempotencyPlugin(persistence_store=store, config=IdempotencyConfig(lease_seconds=10))
    ],
)
