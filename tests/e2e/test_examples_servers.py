"""Every example, run as its docstring says (uvicorn / gunicorn, two workers, REDIS_URL set).

The same HTTP conversation against FastAPI, Starlette, Litestar (uvicorn --workers 2) and
Flask, Django (gunicorn -w 2 -k gthread): first run, replay, key reused with another body,
malformed key, required key missing, key-less requests, an in-flight duplicate.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import redis

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, EXAMPLES, ServerPool, executions

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

ORDER = {"sku": "abc", "qty": 1}
NAMES = list(EXAMPLES)


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["cache-control"] == "no-store"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].endswith("/" + slug)


@pytest.mark.parametrize("name", NAMES)
def test_example_first_replay_reused_invalid_missing(
    name: str, example_servers: ServerPool, redis_client: redis.Redis
) -> None:
    server = example_servers.get(name)
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        assert client.get("/healthz").json() == {"ok": True}

        first = client.post("/orders", json=ORDER, headers=key)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        body = first.json()
        assert uuid.UUID(hex=body["order_id"]).hex == body["order_id"]
        assert (body["sku"], body["qty"], body["run"]) == ("abc", 1, 1)

        # A retry with the same JSON in another key order and spacing is the same request.
        retry = client.post(
            "/orders",
            content=b'{ "qty": 1, "sku": "abc" }',
            headers={**key, "content-type": "application/json"},
        )
        assert retry.status_code == 201
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.content == first.content
        assert retry.headers["content-type"] == first.headers["content-type"]

        # Sent chunked (no Content-Length): still the same request.
        chunked = client.post(
            "/orders",
            content=iter([b'{"sku": "a', b'bc", "qty": 1}']),
            headers={**key, "content-type": "application/json"},
        )
        assert "content-length" not in chunked.request.headers
        assert chunked.headers["idempotent-replayed"] == "true"
        assert chunked.content == first.content

        assert_problem(
            client.post("/orders", json={"sku": "abc", "qty": 2}, headers=key),
            422,
            "idempotency-key-reused",
        )
        assert_problem(
            client.post("/orders", json=ORDER, headers={"Idempotency-Key": "a,b"}),
            400,
            "idempotency-key-invalid",
        )
        assert_problem(client.post("/payments", json=ORDER), 400, "idempotency-key-missing")
        assert executions(redis_client) == 1

        # No key: not ours, every request runs.
        plain = [client.post("/orders", json=ORDER) for _ in range(2)]
        assert [r.status_code for r in plain] == [201, 201]
        assert plain[0].json()["order_id"] != plain[1].json()["order_id"]
        assert all("idempotent-replayed" not in r.headers for r in plain)
        assert executions(redis_client) == 3


@pytest.mark.parametrize("name", NAMES)
def test_example_in_flight_duplicate_gets_409_then_replay(
    name: str, example_servers: ServerPool, redis_client: redis.Redis
) -> None:
    server = example_servers.get(name)
    key = {"Idempotency-Key": f"job-{uuid.uuid4()}"}
    results: dict[str, httpx.Response] = {}

    def original() -> None:
        results["first"] = httpx.post(
            server.base_url + "/slow", json=ORDER, headers=key, timeout=CLIENT_TIMEOUT_SECONDS
        )

    thread = threading.Thread(target=original)
    thread.start()
    try:
        time.sleep(0.3)
        duplicate = httpx.post(
            server.base_url + "/slow", json=ORDER, headers=key, timeout=CLIENT_TIMEOUT_SECONDS
        )
    finally:
        thread.join(timeout=CLIENT_TIMEOUT_SECONDS)

    assert_problem(duplicate, 409, "idempotency-key-in-progress")
    assert int(duplicate.headers["retry-after"]) >= 1
    first = results["first"]
    assert first.status_code == 202
    after = httpx.post(
        server.base_url + "/slow", json=ORDER, headers=key, timeout=CLIENT_TIMEOUT_SECONDS
    )
    assert after.status_code == 202
    assert after.headers["idempotent-replayed"] == "true"
    assert after.content == first.content
    assert executions(redis_client) == 1
