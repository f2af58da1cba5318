"""Fifty identical keyed requests against two worker processes that share Redis.

FastAPI under ``uvicorn --workers 2`` and Flask under ``gunicorn -w 2 -k gthread``, each with
REDIS_URL pointing at the suite's redis-server. Whatever worker or thread a duplicate lands on,
the handler runs once (counted in Redis under ``examples:executions``), every other answer is the
stored response replayed byte for byte or a 409 problem, and nothing is a 5xx.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, ServerPool, executions

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

ORDER = {"sku": "abc", "qty": 1}
REQUESTS = 50
SERVERS = ["fastapi", "flask"]  # uvicorn --workers 2, gunicorn -w 2 -k gthread


@dataclass
class Outcomes:
    executed: list[httpx.Response] = field(default_factory=list)
    replayed: list[httpx.Response] = field(default_factory=list)
    in_progress: list[httpx.Response] = field(default_factory=list)


def classify(responses: list[httpx.Response], executed_status: int) -> Outcomes:
    """Sort the answers; fail on anything that is not the stored response or a 409."""
    outcomes = Outcomes()
    for response in responses:
        assert response.status_code < 500, (response.status_code, response.text)
        if response.headers.get("idempotent-replayed") == "true":
            outcomes.replayed.append(response)
        elif response.status_code == 409:
            assert_in_progress_problem(response)
            outcomes.in_progress.append(response)
        else:
            assert response.status_code == executed_status, (response.status_code, response.text)
            outcomes.executed.append(response)
    assert len(outcomes.executed) == 1, [r.text for r in outcomes.executed]
    original = outcomes.executed[0]
    for replay in outcomes.replayed:
        assert replay.status_code == original.status_code
        assert replay.content == original.content
        assert replay.headers["content-type"] == original.headers["content-type"]
    return outcomes


def assert_in_progress_problem(response: httpx.Response) -> None:
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["retry-after"]) >= 1
    problem = response.json()
    assert problem["status"] == 409
    assert problem["type"].endswith("/idempotency-key-in-progress")


async def fire(
    base_url: str, path: str, key: str, delays: list[float], *, warm: bool = False
) -> list[httpx.Response]:
    """POST ``path`` once per delay (seconds after the start), all with the same key."""
    limits = httpx.Limits(max_connections=len(delays), max_keepalive_connections=len(delays))
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT_SECONDS, limits=limits
    ) as client:
        if warm:  # open every connection first, so that the keyed requests leave together
            await asyncio.gather(*(client.get("/healthz") for _ in delays))

        async def one(delay: float) -> httpx.Response:
            if delay:
                await asyncio.sleep(delay)
            return await client.post(path, json=ORDER, headers={"Idempotency-Key": key})

        return list(await asyncio.gather(*(one(delay) for delay in delays)))


def retry(base_url: str, path: str, key: str) -> httpx.Response:
    return httpx.post(
        base_url + path,
        json=ORDER,
        headers={"Idempotency-Key": key},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


@pytest.mark.parametrize("name", SERVERS)
def test_overlapping_duplicates_on_slow_run_once(
    name: str, example_servers: ServerPool, redis_client: redis.Redis
) -> None:
    """POST /slow (1 s): 5 requests at each of t = 0, 0.3, ... 2.7 s, one key.

    Those sent while the first runs get 409 (so duplicates really overlapped), those sent after
    it finished get the replay; the handler ran once across both workers.
    """
    server = example_servers.get(name)
    key = f"slow-{uuid.uuid4()}"
    delays = [(i % 10) * 0.3 for i in range(REQUESTS)]

    responses = asyncio.run(fire(server.base_url, "/slow", key, delays))

    outcomes = classify(responses, executed_status=202)
    assert len(outcomes.in_progress) >= 4, "the five requests sent at t=0 overlapped"
    assert outcomes.replayed, "requests sent after the first finished were replayed"
    assert outcomes.executed[0].json()["run"] == 1
    assert executions(redis_client) == 1
    final = retry(server.base_url, "/slow", key)
    assert final.headers["idempotent-replayed"] == "true"
    assert final.content == outcomes.executed[0].content
    assert executions(redis_client) == 1


@pytest.mark.parametrize("name", SERVERS)
def test_simultaneous_burst_on_orders_runs_once(
    name: str, example_servers: ServerPool, redis_client: redis.Redis
) -> None:
    """POST /orders: 50 requests on 50 pre-opened connections, sent at once, one key."""
    server = example_servers.get(name)
    key = f"burst-{uuid.uuid4()}"

    responses = asyncio.run(fire(server.base_url, "/orders", key, [0.0] * REQUESTS, warm=True))

    outcomes = classify(responses, executed_status=201)
    assert len(outcomes.replayed) + len(outcomes.in_progress) == REQUESTS - 1
    body = outcomes.executed[0].json()
    assert uuid.UUID(hex=body["order_id"]).hex == body["order_id"]
    assert executions(redis_client) == 1
    final = retry(server.base_url, "/orders", key)
    assert final.status_code == 201
    assert final.headers["idempotent-replayed"] == "true"
    assert final.content == outcomes.executed[0].content
    assert executions(redis_client) == 1
