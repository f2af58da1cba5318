"""Scenario 3: a handler outlives its lease because renewal cannot keep up.

Renewal is switched off in-process (``http/execution``'s ``AsyncLease`` / ``sync_renewer``
replaced by a no-op), the lease is 0.5 s, and handler A is held past it. Request B with the
same key then takes the key over and runs. When A finishes, its completion is refused by the
owner fence and logged ("lease lost"); B's stored response survives and is what every retry
gets.
Both orders are covered: A finishes after B completed, and A finishes while B still runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client

import idempotent_middleware.http.execution
from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    RedisPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from tests.reliability.conftest import Figures

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

LEASE = 0.5
ORDERS = ["stale-finishes-after-new-owner-completed", "stale-finishes-while-new-owner-runs"]


class _NoRenewal:
    """Stands in for AsyncLease and for the sync renewer's entries: never renews."""

    lost = False

    def __init__(self, *args: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def abandoned(self, why: str) -> None:
        pass


class _NoSyncRenewer:
    def start(self, *args: Any) -> _NoRenewal:
        return _NoRenewal()


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisPersistenceLayer]:
    layer = RedisPersistenceLayer(url=redis_url)
    yield layer
    layer.close()


def _lease_lost_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "idempotent_middleware" and "lease lost" in r.getMessage()
    ]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("order", ORDERS)
def test_asgi_stale_owner_is_fenced(
    order: str,
    store: RedisPersistenceLayer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    figures: Figures,
) -> None:
    monkeypatch.setattr(idempotent_middleware.http.execution, "AsyncLease", _NoRenewal)
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    runs: list[int] = []
    gates: dict[int, asyncio.Event] = {}
    started: dict[int, asyncio.Event] = {}

    async def handler(request: Request) -> JSONResponse:
        runs.append(1)
        run = len(runs)
        started[run].set()
        await asyncio.wait_for(gates[run].wait(), 10)
        return JSONResponse({"run": run}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/pay", handler, methods=["POST"])]),
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=LEASE),
    )

    async def scenario() -> dict[str, Any]:
        for run in (1, 2):
            gates[run], started[run] = asyncio.Event(), asyncio.Event()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def post() -> httpx.Response:
                return await client.post(
                    "/pay", json={"amount": 5}, headers={"Idempotency-Key": "L"}
                )

            a = asyncio.create_task(post())
            await asyncio.wait_for(started[1].wait(), 5)
            await asyncio.sleep(LEASE + 0.3)  # A's lease runs out; nobody renews it
            b = asyncio.create_task(post())
            await asyncio.wait_for(started[2].wait(), 5)  # B took the key over and runs
            if order == ORDERS[0]:
                gates[2].set()
                response_b = await asyncio.wait_for(b, 5)
                gates[1].set()
                response_a = await asyncio.wait_for(a, 5)
            else:
                gates[1].set()
                response_a = await asyncio.wait_for(a, 5)
                in_flight = await post()  # B still owns the key: A must not have freed it
                gates[2].set()
                response_b = await asyncio.wait_for(b, 5)
                assert in_flight.status_code == 409, in_flight.text
            retry = await post()
            return {"a": response_a, "b": response_b, "retry": retry}

    result = asyncio.run(scenario())
    a, b, retry = result["a"], result["b"], result["retry"]
    assert a.status_code == 201 and a.json() == {"run": 1}  # A's client still got A's answer
    assert b.status_code == 201 and b.json() == {"run": 2}
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.content == b.content  # the new owner's record survived
    assert len(runs) == 2
    lines = _lease_lost_lines(caplog)
    assert lines, "the refused completion must be logged"
    figures(
        "lease-loss",
        adapter="asgi",
        order=order,
        lease_seconds=LEASE,
        executions=len(runs),
        stored_run=retry.json()["run"],
        lease_lost_log_lines=len(lines),
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("order", ORDERS)
def test_wsgi_stale_owner_is_fenced(
    order: str,
    store: RedisPersistenceLayer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    figures: Figures,
) -> None:
    monkeypatch.setattr(idempotent_middleware.http.execution, "sync_renewer", _NoSyncRenewer())
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    runs: list[int] = []
    lock = threading.Lock()
    gates = {1: threading.Event(), 2: threading.Event()}
    started = {1: threading.Event(), 2: threading.Event()}
    flask_app = Flask(__name__)

    @flask_app.post("/pay")
    def pay() -> Any:
        flask_request.get_data()
        with lock:
            runs.append(1)
            run = len(runs)
        started[run].set()
        assert gates[run].wait(10)
        return {"run": run}, 201

    flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app,
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=LEASE),
    )
    results: dict[str, Any] = {}

    def post(name: str) -> None:
        response = Client(flask_app).post(
            "/pay",
            data=json.dumps({"amount": 5}),
            headers={"Idempotency-Key": "L"},
            content_type="application/json",
        )
        results[name] = (response.status_code, response.get_data(), response.headers)

    thread_a = threading.Thread(target=post, args=("a",), daemon=True)
    thread_b = threading.Thread(target=post, args=("b",), daemon=True)
    thread_a.start()
    assert started[1].wait(5)
    time.sleep(LEASE + 0.3)
    thread_b.start()
    assert started[2].wait(5)
    if order == ORDERS[0]:
        gates[2].set()
        thread_b.join(5)
        gates[1].set()
        thread_a.join(5)
    else:
        gates[1].set()
        thread_a.join(5)
        post("in_flight")
        assert results["in_flight"][0] == 409, results["in_flight"]
        gates[2].set()
        thread_b.join(5)
    assert not thread_a.is_alive() and not thread_b.is_alive()
    post("retry")

    status_a, body_a, _ = results["a"]
    status_b, body_b, _ = results["b"]
    status_r, body_r, headers_r = results["retry"]
    assert (status_a, json.loads(body_a)) == (201, {"run": 1})
    assert (status_b, json.loads(body_b)) == (201, {"run": 2})
    assert status_r == 201 and headers_r.get("Idempotent-Replayed") == "true"
    assert body_r == body_b
    assert len(runs) == 2
    lines = _lease_lost_lines(caplog)
    assert lines, "the refused completion must be logged"
    figures(
        "lease-loss",
        adapter="wsgi",
        order=order,
        lease_seconds=LEASE,
        executions=len(runs),
        stored_run=json.loads(body_r)["run"],
        lease_lost_log_lines=len(lines),
    )
