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


def _flask_app() -> Any:
    from flask import Flask, request

    from idempotent_middleware import WSGIIdempotencyMiddleware

    flask_app = Flask(__name__)

    @flask_app.get("/healthz")
    def flask_healthz() -> dict[str, bool]:
        return {"ok": True}

    @flask_app.post("/orders")
    def flask_orders() -> tuple[dict[str, Any], int]:
        claim = current_claim()
        assert claim is not None
        with psycopg.connect(DSN) as conn:  # commits at the end of the block
            row = conn.execute(
                "INSERT INTO orders (note) VALUES (%s) RETURNING id",
                (str((request.get_json() or {}).get("sku")),),
            ).fetchone()
            claim.record_executed(conn)
        assert row is not None
        return {"order_id": row[0], "worker": os.getpid()}, 201

    flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, persistence_store=PostgresPersistenceLayer(dsn=DSN, max_size=20)
    )
    return flask_app


#: Flask under gunicorn (WSGI, the sync path).
wsgi_app = _flask_app()
