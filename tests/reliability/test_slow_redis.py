"""Scenario 5: a slow or stalled Redis, through a loopback TCP proxy (``tcp_proxy.py``).

The apps use ``RedisPersistenceLayer``'s defaults (``socket_timeout`` 2 s). Added latency only
slows requests down; a stalled Redis turns into 503 + Retry-After within the socket timeout,
never into a hang, and the ASGI event loop keeps serving unkeyed requests meanwhile. Once the
proxy heals, keys whose claim never reached Redis run normally, once.
"""

from __future__ import annotations

import asyncio
import statistics
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

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    RedisPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from tests.redis_servers import RedisProcess
from tests.reliability.conftest import Figures
from tests.reliability.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

SOCKET_TIMEOUT = 2.0  # the layer's default
LEASE = 5.0


class Apps:
    def __init__(self, proxy_port: int) -> None:
        url = f"redis://127.0.0.1:{proxy_port}/0"
        self.stores = [RedisPersistenceLayer(url=url), RedisPersistenceLayer(url=url)]
        self.runs: list[str] = []
        config = IdempotencyConfig(lease_seconds=LEASE)

        async def order(request: Request) -> JSONResponse:
            self.runs.append(request.headers["idempotency-key"])
            return JSONResponse({"ok": True}, status_code=201)

        async def health(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        starlette = Starlette(
            routes=[Route("/orders", order, methods=["POST"]), Route("/healthz", health)]
        )
        self.asgi = IdempotencyMiddleware(
            starlette, persistence_store=self.stores[0], config=config
        )
        flask_app = Flask(__name__)

        @flask_app.post("/orders")
        def flask_order() -> Any:
            self.runs.append(flask_request.headers["Idempotency-Key"])
            return {"ok": True}, 201

        flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
            flask_app.wsgi_app, persistence_store=self.stores[1], config=config
        )
        self.wsgi = flask_app

    async def post(self, adapter: str, key: str) -> tuple[int, str | None, float]:
        start = time.monotonic()
        if adapter == "asgi":
            transport = httpx.ASGITransport(app=self.asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post("/orders", json={}, headers={"Idempotency-Key": key})
            return r.status_code, r.headers.get("retry-after"), time.monotonic() - start
        response = await asyncio.to_thread(
            Client(self.wsgi).post, "/orders", json={}, headers={"Idempotency-Key": key}
        )
        return (
            response.status_code,
            response.headers.get("Retry-After"),
            time.monotonic() - start,
        )

    async def health(self) -> tuple[int, float]:
        start = time.monotonic()
        transport = httpx.ASGITransport(app=self.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/healthz")
        return r.status_code, time.monotonic() - start

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def proxy(redis_server: RedisProcess, redis_url: str) -> Iterator[TcpProxy]:
    tcp = TcpProxy(redis_server.port)
    yield tcp
    tcp.close()


@pytest.fixture
def apps(proxy: TcpProxy) -> Iterator[Apps]:
    built = Apps(proxy.port)
    yield built
    built.close()


@pytest.mark.timeout(30)
def test_latency_slows_but_never_fails(proxy: TcpProxy, apps: Apps, figures: Figures) -> None:
    proxy.configure(latency=0.05)  # 50 ms each way: 100 ms per Redis round trip

    async def run() -> list[tuple[str, int, float]]:
        results = []
        for adapter in ("asgi", "wsgi"):
            outcomes = await asyncio.gather(
                *(apps.post(adapter, f"lat-{adapter}-{i % 5}") for i in range(10))
            )
            results += [(adapter, status, took) for status, _, took in outcomes]
        return results

    results = asyncio.run(asyncio.wait_for(run(), 20))
    assert all(status in (201, 409) for _, status, _ in results), results
    assert sorted(apps.runs) == sorted(f"lat-{a}-{i}" for a in ("asgi", "wsgi") for i in range(5))
    took = [t for _, _, t in results]
    assert min(took) >= 0.1 and max(took) < SOCKET_TIMEOUT
    figures(
        "slow-redis-latency",
        added_latency_ms_each_way=50,
        requests=len(results),
        executions=len(apps.runs),
        responses_5xx=0,
        median_request_seconds=round(statistics.median(took), 3),
        max_request_seconds=round(max(took), 3),
    )


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_stalled_redis_answers_503_within_socket_timeout(
    proxy: TcpProxy, apps: Apps, figures: Figures
) -> None:
    async def run() -> dict[str, Any]:
        assert (await apps.post("asgi", "warm"))[0] == 201  # pooled connections exist
        assert (await apps.post("wsgi", "warm-w"))[0] == 201
        proxy.configure(blackhole=True)  # commands vanish; Redis never sees them
        keys = [("asgi", f"stall-a{i}") for i in range(4)] + [
            ("wsgi", f"stall-w{i}") for i in range(2)
        ]
        posts = [asyncio.create_task(apps.post(adapter, key)) for adapter, key in keys]
        await asyncio.sleep(0.3)
        health = await apps.health()  # the event loop is not blocked by the stall
        stalled = await asyncio.wait_for(asyncio.gather(*posts), SOCKET_TIMEOUT * 4)
        ran_while_stalled = [key for key in apps.runs if key.startswith("stall-")]
        proxy.heal()
        healed_at = time.monotonic()
        fresh = await apps.post("asgi", "after-heal")
        recovered = time.monotonic() - healed_at
        retries = [await apps.post(adapter, key) for adapter, key in keys]
        return {
            "stalled": stalled,
            "ran_while_stalled": ran_while_stalled,
            "health": health,
            "fresh": fresh,
            "recovered": recovered,
            "retries": retries,
            "keys": keys,
        }

    result = asyncio.run(asyncio.wait_for(run(), 30))
    stalled = result["stalled"]
    assert all(status == 503 and retry_after == "1" for status, retry_after, _ in stalled), stalled
    longest = max(took for _, _, took in stalled)
    assert longest <= SOCKET_TIMEOUT + 1.5, f"a stalled request took {longest:.2f}s"
    assert result["health"][0] == 200 and result["health"][1] < 0.5
    assert result["ran_while_stalled"] == [], "a handler ran without a claim (fail closed)"
    assert result["fresh"][0] == 201 and result["recovered"] < 1.0
    assert all(status == 201 for status, _, _ in result["retries"]), result["retries"]
    for _, key in result["keys"]:
        assert apps.runs.count(key) == 1
    figures(
        "slow-redis-stall",
        socket_timeout_seconds=SOCKET_TIMEOUT,
        requests=len(stalled) + 2 + len(result["retries"]),
        stalled_requests=len(stalled),
        stalled_answered_503=sum(s == 503 for s, _, _ in stalled),
        max_stalled_request_seconds=round(longest, 3),
        unkeyed_request_during_stall_seconds=round(result["health"][1], 3),
        recovery_seconds=round(result["recovered"], 3),
        executions=len(apps.runs),
    )


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_timed_out_claim_does_not_block_the_retry(proxy: TcpProxy, apps: Apps) -> None:
    async def run() -> tuple[int, int]:
        assert (await apps.post("asgi", "warm"))[0] == 201
        proxy.configure(stalled=True, directions=("down",))  # Redis runs SET, the reply is late
        first, _, _ = await apps.post("asgi", "phantom")
        proxy.heal()
        await asyncio.sleep(1.1)  # what Retry-After asked for
        retry, _, _ = await apps.post("asgi", "phantom")
        return first, retry

    first, retry = asyncio.run(asyncio.wait_for(run(), 20))
    assert first == 503
    assert apps.runs.count("phantom") == 1  # the retry's run only: the 503 ran nothing
    assert retry == 201, f"retry after Retry-After got {retry} (lease {LEASE}s, no handler ran)"
