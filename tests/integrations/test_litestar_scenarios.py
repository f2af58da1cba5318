"""The scenario table (``tests/scenarios``) through the Litestar integration.

The endpoints of ``tests/scenarios/apps.py`` as Litestar handlers (``ASGIResponse`` keeps the
repeated header lines as sent), the row's configuration given to ``IdempotencyPlugin``, on the
in-memory store and on a real redis-server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar import Litestar, Request, post, route
from litestar.response.base import ASGIResponse

from idempotent_middleware import BasePersistenceLayer, IdempotencyConfig
from idempotent_middleware.litestar import IdempotencyPlugin
from tests.scenarios.apps import ORDER_HEADERS, Counter, order_body
from tests.scenarios.drivers import AsgiDriver, Driver
from tests.scenarios.test_table import SCENARIOS, Scenario, _run, _store

pytestmark = pytest.mark.timeout(120)


def litestar_app(counter: Counter, store: BasePersistenceLayer, config: IdempotencyConfig) -> Any:
    methods: Any = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    async def orders_response(request: Request[Any, Any, Any]) -> ASGIResponse:
        body = await request.body()
        return ASGIResponse(
            body=order_body(counter.next(), request.method, body),
            status_code=201,
            media_type="application/json",
            headers=list(ORDER_HEADERS),
        )

    @route("/orders", http_method=methods)
    async def orders(request: Request[Any, Any, Any]) -> ASGIResponse:
        return await orders_response(request)

    @route("/internal/orders", http_method=methods)
    async def internal_orders(request: Request[Any, Any, Any]) -> ASGIResponse:
        return await orders_response(request)

    @post("/status/{code:int}")
    async def status(code: int) -> ASGIResponse:
        counter.next()
        return ASGIResponse(body=b"status", status_code=code)

    @post("/boom")
    async def boom() -> None:
        counter.next()
        raise RuntimeError("handler failed")

    @post("/slow")
    async def slow(s: float = 0.5) -> ASGIResponse:
        run = counter.next()
        await asyncio.sleep(s)
        return ASGIResponse(body=f"slow {run}".encode(), status_code=202)

    @post("/big")
    async def big() -> ASGIResponse:
        counter.next()
        return ASGIResponse(body=b"b" * 1000, status_code=200)

    @post("/empty")
    async def empty() -> ASGIResponse:
        counter.next()
        return ASGIResponse(status_code=204)

    app = Litestar(
        route_handlers=[orders, internal_orders, status, boom, slow, big, empty],
        plugins=[IdempotencyPlugin(persistence_store=store, config=config)],
    )

    async def method_upper_cased(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "method": scope["method"].upper()}
        await app(scope, receive, send)

    return method_upper_cased


class LitestarDriver(AsgiDriver):
    name = "litestar"

    def __init__(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> None:
        self.counter = Counter()
        self.app = litestar_app(self.counter, store, config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()


@pytest.fixture(params=["memory", "redis"])
def make_driver(request: pytest.FixtureRequest) -> Iterator[Callable[[Scenario], Driver]]:
    made: list[Driver] = []

    def make(scenario: Scenario) -> Driver:
        driver = LitestarDriver(
            _store(request.param, scenario, request), IdempotencyConfig(**scenario.config)
        )
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_through_litestar(
    scenario: Scenario, make_driver: Callable[[Scenario], Driver]
) -> None:
    _run(scenario, make_driver(scenario))
