"""Scenario 4: Redis is killed under load and restarted on the same port.

Three in-process apps share one dedicated (non-persistent) redis-server while load runs: ASGI
fail-closed (the default), ASGI ``fail_open=True`` and WSGI fail-closed. While Redis is down
every keyed request to a fail-closed app gets 503 + Retry-After and no handler runs; the
fail-open app runs its handlers unprotected. After the restart the first 2xx comes within 1 s.

What a restart of a non-persistent Redis means for exactly-once (asserted, so the numbers in
RELIABILITY.md are observed, not assumed):

- a key claimed before the outage whose handler completes after the restart is stored then
  (the completion script accepts a missing key) and replayed: it runs once;
- but the restart forgot every claim and every stored response: a duplicate of a key that is
  still running gets no 409 and runs a second time, and a retry of a key completed before the
  outage runs again. Exactly-once across a Redis restart needs a Redis that keeps its data
  (AOF with ``appendfsync always``, or a replica promoted by Sentinel with ``WAIT``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
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

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

HEALTHY, DOWN, UP = 0.5, 1.0, 3.0  # seconds of load in each phase
#: UP outlasts three quarters of the 5 s lease after the claim: by the time the duplicate
#: below is sent, the running handler's renewal has met the restarted server.
WORKERS = 4
LOAD_APPS = ("asgi-fail-closed", "asgi-fail-open", "wsgi-fail-closed")


@dataclass
class Sample:
    app: str
    key: str
    start: float
    end: float
    status: int
    retry_after: str | None
    content_type: str | None


class Apps:
    """The three apps, their run logs, and a gate per held key."""

    def __init__(self, url: str) -> None:
        self.runs: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.gates: dict[str, asyncio.Event] = {}
        self.stores = [RedisPersistenceLayer(url=url) for _ in range(3)]
        self.asgi = {
            "asgi-fail-closed": self._build_asgi(
                "asgi-fail-closed", self.stores[0], fail_open=False
            ),
            "asgi-fail-open": self._build_asgi("asgi-fail-open", self.stores[1], fail_open=True),
        }
        self.wsgi = self._wsgi("wsgi-fail-closed", self.stores[2])

    def _build_asgi(self, name: str, store: RedisPersistenceLayer, *, fail_open: bool) -> Any:
        async def order(request: Request) -> JSONResponse:
            key = request.headers["idempotency-key"]
            self.runs[name].append((key, time.monotonic()))
            gate = self.gates.get(key)
            if gate is not None and self.ran(name, key) == 1:  # only the first run is held
                await asyncio.wait_for(gate.wait(), 15)
            return JSONResponse({"key": key, "run": len(self.runs[name])}, status_code=201)

        return IdempotencyMiddleware(
            Starlette(routes=[Route("/orders", order, methods=["POST"])]),
            persistence_store=store,
            config=IdempotencyConfig(lease_seconds=5, fail_open=fail_open),
        )

    def _wsgi(self, name: str, store: RedisPersistenceLayer) -> Flask:
        flask_app = Flask(__name__)

        @flask_app.post("/orders")
        def order() -> Any:
            key = flask_request.headers["Idempotency-Key"]
            self.runs[name].append((key, time.monotonic()))
            return {"key": key}, 201

        flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
            flask_app.wsgi_app, persistence_store=store, config=IdempotencyConfig(lease_seconds=5)
        )
        return flask_app

    async def post(self, app: str, key: str) -> Sample:
        start = time.monotonic()
        if app in self.asgi:
            transport = httpx.ASGITransport(app=self.asgi[app])
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post(
                    "/orders", json={"n": 1}, headers={"Idempotency-Key": key}, timeout=10
                )
            status, headers = response.status_code, response.headers
        else:
            wsgi_response = await asyncio.to_thread(
                Client(self.wsgi).post, "/orders", json={"n": 1}, headers={"Idempotency-Key": key}
            )
            status, headers = wsgi_response.status_code, wsgi_response.headers
        return Sample(
            app,
            key,
            start,
            time.monotonic(),
            status,
            headers.get("retry-after"),
            headers.get("content-type"),
        )

    def ran(self, app: str, key: str) -> int:
        return sum(1 for k, _ in self.runs[app] if k == key)

    def close(self) -> None:
        for store in self.stores:
            store.close()


async def _load(apps: Apps, worker: int, stop: asyncio.Event, samples: list[Sample]) -> None:
    for i in range(2000):  # bounded: ~3 s of load at most a few hundred rounds
        if stop.is_set():
            return
        for app in LOAD_APPS:
            samples.append(await apps.post(app, f"load-{worker}-{i}"))
        await asyncio.sleep(0.01)


async def _outage(apps: Apps, redis: RedisProcess) -> dict[str, Any]:
    samples: list[Sample] = []
    stop = asyncio.Event()
    app = "asgi-fail-closed"
    for key in ("claimed-then-completed", "claimed-then-duplicated"):
        apps.gates[key] = asyncio.Event()
    workers = [asyncio.create_task(_load(apps, w, stop, samples)) for w in range(WORKERS)]
    marks: dict[str, Any] = {}
    try:
        completed_before = await apps.post(app, "completed-before")
        assert completed_before.status == 201
        held = {
            key: asyncio.create_task(apps.post(app, key))
            for key in ("claimed-then-completed", "claimed-then-duplicated")
        }
        await asyncio.sleep(HEALTHY)
        assert apps.ran(app, "claimed-then-completed") == 1  # claimed, running, not finished

        marks["stopping"] = time.monotonic()
        await asyncio.to_thread(redis.stop)
        marks["down"] = time.monotonic()
        await asyncio.sleep(DOWN)
        marks["restart"] = time.monotonic()
        await asyncio.to_thread(redis.restart)
        marks["up"] = time.monotonic()
        await asyncio.sleep(UP)

        # After the restart, with the first claim forgotten: a duplicate of a running key.
        duplicate = await apps.post(app, "claimed-then-duplicated")
        marks["duplicate_status"] = duplicate.status
        for gate in apps.gates.values():
            gate.set()
        marks["held"] = {key: await asyncio.wait_for(task, 10) for key, task in held.items()}
        marks["completed_retry"] = await apps.post(app, "claimed-then-completed")
        marks["duplicated_retry"] = await apps.post(app, "claimed-then-duplicated")
        marks["completed_before_retry"] = await apps.post(app, "completed-before")
    finally:
        stop.set()
        for gate in apps.gates.values():
            gate.set()
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 20)
    marks["samples"] = samples
    return marks


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_redis_outage_fail_closed_fail_open_and_recovery(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture, figures: Figures
) -> None:
    caplog.set_level(logging.WARNING, logger="idempotent_middleware")
    apps = Apps(own_redis.url)
    try:
        marks = asyncio.run(_outage(apps, own_redis))
    finally:
        apps.close()
    samples: list[Sample] = marks["samples"]
    down, restart, up = marks["down"], marks["restart"], marks["up"]
    assert all(s.status < 500 for s in samples if s.end < marks["stopping"]), (
        "5xx before the outage"
    )

    outage_figures: dict[str, Any] = {}
    first_ok_max = 0.0
    for app in LOAD_APPS:
        during = [s for s in samples if s.app == app and s.start >= down and s.end <= restart]
        assert len(during) >= 10, f"{app}: too little load during the outage"
        ran_during = [s for s in during if apps.ran(app, s.key)]
        if app == "asgi-fail-open":
            assert all(s.status == 201 for s in during), {s.status for s in during}
            assert len(ran_during) == len(during)  # unprotected, but served
        else:
            assert all(s.status == 503 for s in during), {s.status for s in during}
            assert all(s.retry_after == "1" for s in during)
            assert all(s.content_type == "application/problem+json" for s in during)
            assert not ran_during, "a handler ran while the store was down (fail closed)"
        after = [s for s in samples if s.app == app and s.start >= restart]
        first_ok = min((s.end for s in after if 200 <= s.status < 300), default=None)
        assert first_ok is not None, f"{app} never recovered"
        recovery = max(0.0, first_ok - up)
        first_ok_max = max(first_ok_max, recovery)
        assert recovery <= 1.0, f"{app} recovered {recovery:.3f}s after the restart"
        settled = [s for s in samples if s.app == app and s.start >= up + 1.0]
        assert settled and all(s.status == 201 for s in settled), {s.status for s in settled}
        outage_figures[app] = {
            "requests": sum(1 for s in samples if s.app == app),
            "during_outage": len(during),
            "during_outage_503": sum(s.status == 503 for s in during),
            "handlers_run_during_outage": len(ran_during),
            "recovery_seconds": round(recovery, 3),
        }

    app = "asgi-fail-closed"
    held = marks["held"]
    # Claimed before the outage, completed after it: stored on the fresh server, run once.
    assert held["claimed-then-completed"].status == 201
    assert marks["completed_retry"].status == 201
    assert apps.ran(app, "claimed-then-completed") == 1
    # The restart forgot the in-flight claim; the running handler's next renewal took the
    # key back (renewal of an absent key re-stores the claim), so the duplicate is a 409.
    assert marks["duplicate_status"] == 409
    assert apps.ran(app, "claimed-then-duplicated") == 1
    # The restart forgot the stored response: the retry of a completed key ran again.
    assert marks["completed_before_retry"].status == 201
    assert apps.ran(app, "completed-before") == 2

    figures(
        "redis-outage",
        outage_seconds=round(up - down, 3),
        requests=len(samples),
        # 5xx outside the outage: requests that ended before the kill began, or began
        # after the first 2xx of the recovery (requests in flight at the kill are excluded).
        responses_5xx_outside_outage=sum(
            1
            for s in samples
            if s.status >= 500 and (s.end < marks["stopping"] or s.start > up + first_ok_max)
        ),
        apps=outage_figures,
        max_recovery_seconds=max(v["recovery_seconds"] for v in outage_figures.values()),
        claimed_before_completed_after_runs=apps.ran(app, "claimed-then-completed"),
        in_flight_duplicate_after_restart_runs=apps.ran(app, "claimed-then-duplicated"),
        completed_before_retried_after_restart_runs=apps.ran(app, "completed-before"),
    )
