"""The scenario table (``tests/scenarios``) through the FastAPI integration.

The same endpoints as ``tests/scenarios/apps.py`` written as FastAPI routes, the same
configuration per row, installed with ``Idempotency(app)`` instead of the raw middleware:
the integration must answer every row as the adapter does, on the in-memory store and on a
real redis-server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from idempotent_middleware import BasePersistenceLayer, IdempotencyConfig
from idempotent_middleware.fastapi import Idempotency
from tests.scenarios.apps import ORDER_HEADERS, Counter, order_body
from tests.scenarios.drivers import AsgiDriver, Driver
from tests.scenarios.test_table import SCENARIOS, Scenario, _run, _store

pytestmark = pytest.mark.timeout(120)


def fastapi_app(counter: Counter, store: BasePersistenceLayer, config: IdempotencyConfig) -> Any:
    app = FastAPI()
    Idempotency(app, persistence_store=store, config=config)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    async def orders(request: Request) -> Response:
        body = await request.body()
        response = Response(
            order_body(counter.next(), request.method, body), 201, media_type="application/json"
        )
        for name, value in ORDER_HEADERS:
            response.headers.append(name, value)
        return response

    app.add_api_route("/orders", orders, methods=methods)
    app.add_api_route("/internal/orders", orders, methods=methods)

    @app.post("/status/{code}")
    async def status(code: int) -> Response:
        counter.next()
        return Response(b"status", code)

    @app.post("/boom")
    async def boom() -> Response:
        counter.next()
        raise RuntimeError("handler failed")

    @app.post("/slow")
    async def slow(s: float = 0.5) -> Response:
        run = counter.next()
        await asyncio.sleep(s)
        return Response(f"slow {run}".encode(), 202)

    @app.post("/big")
    async def big() -> Response:
        counter.next()
        return Response(b"b" * 1000, 200)

    @app.post("/empty")
    async def empty() -> Response:
        counter.next()
        return Response(status_code=204)

    async def method_upper_cased(scope: Any, receive: Any, send: Any) -> None:
        # Routed case-insensitively, as the table's Starlette app is (see its docstring).
        if scope["type"] == "http":
            scope = {**scope, "method": scope["method"].upper()}
        await app(scope, receive, send)

    return method_upper_cased


class FastAPIDriver(AsgiDriver):
    name = "fastapi"

    def __init__(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> None:
        # AsgiDriver's own __init__ wraps the Starlette app in the raw middleware; this one
        # installs the integration inside a FastAPI app instead.
        self.counter = Counter()
        self.app = fastapi_app(self.counter, store, config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()


@pytest.fixture(params=["memory", "redis"])
def make_driver(request: pytest.FixtureRequest) -> Iterator[Callable[[Scenario], Driver]]:
    made: list[Driver] = []

    def make(scenario: Scenario) -> Driver:
        driver = FastAPIDriver(
            _store(request.param, scenario, request), IdempotencyConfig(**scenario.config)
        )
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_through_fastapi(
    scenario: Scenario, make_driver: Callable[[Scenario], Driver]
) -> None:
    _run(scenario, make_driver(scenario))
