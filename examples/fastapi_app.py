"""FastAPI with the native integration: options next to each route, the contract in OpenAPI.

Run:  uvicorn examples.fastapi_app:app            (in-memory store, one process)
      REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app --workers 4
Try:  curl -i -X POST localhost:8000/orders -H 'Idempotency-Key: k1' \
           -H 'content-type: application/json' -d '{"sku": "abc", "qty": 1}'
      curl -s localhost:8000/openapi.json     (the Idempotency-Key parameter, the problems)
"""

from __future__ import annotations

import asyncio
import uuid

from fastapi import FastAPI
from pydantic import BaseModel

from examples._store import count_execution, make_store
from idempotent_middleware import IdempotencyConfig
from idempotent_middleware.fastapi import Idempotency, idempotent

store = make_store()
_runs: list[int] = []

app = FastAPI(title="orders")
# Before the routes: they are made with the integration's route class.
Idempotency(app, persistence_store=store, config=IdempotencyConfig(lease_seconds=10))


class Order(BaseModel):
    sku: str
    qty: int


@app.post("/orders", status_code=201)
async def create_order(order: Order) -> dict[str, object]:
    run = count_execution(store, _runs)
    return {"order_id": uuid.uuid4().hex, "sku": order.sku, "qty": order.qty, "run": run}


@app.post("/payments", status_code=201)
@idempotent(raise_on_no_idempotency_key=True, expires_after_seconds=7 * 86400)
async def pay(order: Order) -> dict[str, object]:
    """Payments must carry a key, and their records live a week."""
    return {"payment_id": uuid.uuid4().hex, "amount": order.qty}


@app.post("/slow", status_code=202)
async def slow(order: Order) -> dict[str, object]:
    await asyncio.sleep(1.0)
    return {"job_id": uuid.uuid4().hex, "run": count_execution(store, _runs)}


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}
