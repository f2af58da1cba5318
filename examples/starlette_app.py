"""Starlette with the ASGI middleware (same endpoints as ``fastapi_app.py``).

Run:  uvicorn examples.starlette_app:app            (in-memory store, one process)
      REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.starlette_app:app --workers 4
Try:  curl -i -X POST localhost:8000/orders -H 'Idempotency-Key: k1' \
           -H 'content-type: application/json' -d '{"sku": "abc", "qty": 1}'
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples._store import count_execution, make_store
from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware, RouteOptions

store = make_store()
_runs: list[int] = []


async def _order(request: Request) -> dict[str, Any] | None:
    """The validated ``{"sku": str, "qty": int}`` body, or None."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("sku"), str)
        or not isinstance(body.get("qty"), int)
        or isinstance(body.get("qty"), bool)
    ):
        return None
    return body


def _invalid() -> JSONResponse:
    return JSONResponse({"detail": "body must be {'sku': str, 'qty': int}"}, status_code=422)


async def create_order(request: Request) -> JSONResponse:
    order = await _order(request)
    if order is None:
        return _invalid()
    run = count_execution(store, _runs)
    return JSONResponse(
        {"order_id": uuid.uuid4().hex, "sku": order["sku"], "qty": order["qty"], "run": run},
        status_code=201,
    )


async def pay(request: Request) -> JSONResponse:
    order = await _order(request)
    if order is None:
        return _invalid()
    return JSONResponse({"payment_id": uuid.uuid4().hex, "amount": order["qty"]}, status_code=201)


async def slow(request: Request) -> JSONResponse:
    if await _order(request) is None:
        return _invalid()
    await asyncio.sleep(1.0)
    return JSONResponse(
        {"job_id": uuid.uuid4().hex, "run": count_execution(store, _runs)}, status_code=202
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/orders", create_order, methods=["POST"]),
        Route("/payments", pay, methods=["POST"]),
        Route("/slow", slow, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    middleware=[
        Middleware(
            IdempotencyMiddleware,
            persistence_store=store,
            config=IdempotencyConfig(
                lease_seconds=10,
                # Per route: payments must carry a key, and their records live a week.
                routes={
                    "/payments": RouteOptions(
                        raise_on_no_idempotency_key=True, expires_after_seconds=7 * 86400
                    )
                },
            ),
        )
    ],
)
