"""FastAPI app on PostgreSQL for the multi-worker test: each execution inserts an order in
its own transaction and records the execution in that same transaction (``current_claim``)."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from fastapi import FastAPI

from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware, current_claim
from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

DSN = os.environ["IDEMPOTENCY_PG_DSN"]

app = FastAPI()
app.add_middleware(
    IdempotencyMiddleware,
    persistence_store=PostgresPersistenceLayer(dsn=DSN, max_size=20),
    config=IdempotencyConfig(),
)


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/orders", status_code=201)
async def orders(order: dict[str, Any]) -> dict[str, Any]:
    claim = current_claim()
    assert claim is not None
    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        cursor = await conn.execute(
            "INSERT INTO orders (note) VALUES (%s) RETURNING id", (str(order.get("sku")),)
        )
        row = await cursor.fetchone()
        await claim.record_executed_async(conn)
    assert row is not None
    return {"order_id": row[0], "worker": os.getpid()}
