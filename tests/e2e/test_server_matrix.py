"""The end-to-end scenarios under every server we support, each on the suite's real Redis.

One scenario function per behaviour, parametrised over the deployments of
``tests/e2e/deployments.py`` (no copy per server): a matrix app under uvicorn, gunicorn,
Hypercorn (asyncio and trio), Granian (ASGI and WSGI), Daphne, Waitress, uWSGI, and Django
under ASGI (uvicorn, Daphne) and WSGI (gunicorn), two workers each. A server that is not
installed is skipped with the reason, never silently.

The scenarios: the first request executes and a retry replays it byte for byte with
``Idempotent-Replayed: true``; an in-flight duplicate gets 409; another body under the key gets
422; a streamed response is stored and replayed; a client that hangs up before or in the middle
of the response, then retries, never makes the handler run twice; concurrent duplicates over
both workers run the handler once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, ServerGroup
from tests.e2e.deployments import (
    DEPLOYMENTS,
    runs,
    skip_unless_installed,
    start_deployment,
    stored_body,
)
from tests.e2e.matrix.common import LEASE_SECONDS, SLOW_SECONDS, expected_stream
from tests.e2e.test_examples_servers import assert_problem
from tests.e2e.test_multiworker import assert_in_progress_problem, classify
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

#: Long enough for a claim abandoned by a hung-up client to run out, with a margin for load.
SETTLE_SECONDS = LEASE_SECONDS + 10.0


#: The handler the early hang-up leaves: long enough for Daphne's cancellation to reach it.
ABANDONED_SECONDS = 3.0


@pytest.fixture(scope="module", params=list(DEPLOYMENTS))
def deployment(
    request: pytest.FixtureRequest,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerGroup]:
    name: str = request.param
    skip_unless_installed(name)
    group = start_deployment(name, redis_server.url, tmp_path_factory.mktemp(f"matrix-{name}"))
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="module")
def counter(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()


def post(url: str, path: str, key: str, body: bytes = b'{"op": 1}') -> httpx.Response:
    return httpx.post(
        url + path,
        content=body,
        headers={"Idempotency-Key": key, "content-type": "application/json"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


def new_key(scenario: str) -> str:
    return f"matrix-{scenario}-{uuid.uuid4()}"


def hang_up(port: int, path: str, key: str, *, wait_for: bytes | None, after: float) -> bytes:
    """Send a keyed POST, wait until ``wait_for`` arrived (or ``after`` s), then reset."""
    body = b'{"op": 1}'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Idempotency-Key: {key}\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(head + body)
        deadline = time.monotonic() + after
        sock.settimeout(0.05)
        while time.monotonic() < deadline and (wait_for is None or wait_for not in received):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        # RST, not FIN: the server's next write fails, as when a client process dies.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return received


def settle(url: str, path: str, key: str) -> httpx.Response:
    """Retry until the answer is no longer "in progress" (the lease bounds the wait)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        response = post(url, path, key)
        if response.status_code != 409 or time.monotonic() > deadline:
            return response
        if not response.json()["type"].endswith("/idempotency-key-in-progress"):
            return response
        time.sleep(0.2)


def assert_replay_or_distinct_conflict(response: httpx.Response, original: bytes | None) -> None:
    """A retry after a hung-up execution: its replay, or a 409 that is not "in progress"."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.headers.get("idempotent-replayed") == "true":
        assert original is not None and response.content == original
        return
    assert response.status_code == 409, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    assert not response.json()["type"].endswith("/idempotency-key-in-progress"), response.text


def test_first_request_executes_and_retry_replays_byte_for_byte(
    deployment: ServerGroup, counter: redis.Redis
) -> None:
    key = new_key("replay")
    first_url, second_url = deployment.base_urls[0], deployment.base_urls[-1]
    first = post(first_url, "/orders", key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert first.content == stored_body(counter, key)

    retries = [post(url, "/orders", key) for url in (first_url, second_url, first_url)]
    for retry in retries:
        assert retry.status_code == 201, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.content == first.content
        assert retry.headers["content-type"] == first.headers["content-type"]
    assert runs(counter, key) == 1


def test_in_flight_duplicate_gets_409(deployment: ServerGroup, counter: redis.Redis) -> None:
    key = new_key("in-flight")
    urls = deployment.base_urls

    async def race() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
            headers = {"Idempotency-Key": key, "content-type": "application/json"}
            original = asyncio.create_task(
                client.post(urls[0] + "/slow", content=b'{"op": 1}', headers=headers)
            )
            # The duplicate leaves once the first run has started (the app counted it).
            deadline = time.monotonic() + CLIENT_TIMEOUT_SECONDS
            while runs(counter, key) == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            duplicate = await client.post(urls[-1] + "/slow", content=b'{"op": 1}', headers=headers)
            return await original, duplicate

    first, duplicate = asyncio.run(race())
    assert_in_progress_problem(duplicate)
    assert first.status_code == 202, first.text
    after = post(urls[-1], "/slow", key)
    assert after.status_code == 202
    assert after.headers["idempotent-replayed"] == "true"
    assert after.content == first.content
    assert runs(counter, key) == 1


def test_other_body_under_the_key_gets_422(deployment: ServerGroup, counter: redis.Redis) -> None:
    key = new_key("reused")
    first = post(deployment.base_urls[0], "/orders", key, b'{"op": 1}')
    assert first.status_code == 201, first.text
    for url in deployment.base_urls:
        assert_problem(post(url, "/orders", key, b'{"op": 2}'), 422, "idempotency-key-reused")
    assert runs(counter, key) == 1


def test_streamed_response_is_stored_and_replayed(
    deployment: ServerGroup, counter: redis.Redis
) -> None:
    key = new_key("stream")
    chunks = 16  # 128 KiB, under the default 1 MiB cap on a stored response
    expected = expected_stream(chunks)
    path = f"/stream?chunks={chunks}&delay=0.005"
    first = post(deployment.base_urls[0], path, key)
    assert first.status_code == 200, first.text[:300]
    assert "idempotent-replayed" not in first.headers
    assert first.content == expected
    for url in deployment.base_urls:
        replay = post(url, path, key)
        assert replay.status_code == 200, replay.text[:300]
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == expected
    assert runs(counter, key) == 1


def test_client_hangs_up_before_the_response_then_retries_runs_once(
    deployment: ServerGroup, counter: redis.Redis
) -> None:
    """The client gives up while ``/slow`` runs (before any response byte), then retries.

    The handler either completes (the retry replays it) or is stopped by its framework or
    server (Django under ASGI returns no response, Daphne cancels the app): it had started, so
    the retry gets a 409 of its own, never a second run.
    """
    key = new_key("hang-up-early")
    path = f"/slow?seconds={ABANDONED_SECONDS}"
    got = hang_up(deployment.ports[0], path, key, wait_for=None, after=0.3)
    assert got == b""
    time.sleep(ABANDONED_SECONDS)  # the handler finishes meanwhile (or its server stops it)
    retry = settle(deployment.base_urls[-1], path, key)
    assert runs(counter, key) == 1, f"ran {runs(counter, key)} times; retry: {retry.text[:300]}"
    assert_replay_or_distinct_conflict(retry, stored_body(counter, key))


def test_client_hangs_up_mid_response_then_retries_runs_once(
    deployment: ServerGroup, counter: redis.Redis
) -> None:
    """The client leaves after the first chunk of a 2 s stream, then retries with the key."""
    key = new_key("hang-up-mid-stream")
    path = "/stream?chunks=10&delay=0.2"
    port = deployment.ports[0]
    got = hang_up(port, path, key, wait_for=b"chunk 0 ", after=CLIENT_TIMEOUT_SECONDS)
    assert b"chunk 0 " in got, got[:300]
    time.sleep(2.0)  # past the end the stream would have had
    retry = settle(deployment.base_urls[-1], path, key)
    assert runs(counter, key) == 1, f"ran {runs(counter, key)} times; retry: {retry.text[:300]}"
    # A replay, if any, must be the whole stream: never a truncated one.
    assert_replay_or_distinct_conflict(retry, expected_stream(10))


def test_concurrent_duplicates_on_two_workers_run_once(
    deployment: ServerGroup, counter: redis.Redis
) -> None:
    """24 duplicates over both workers: 12 at once, 12 while the first runs, on warm sockets."""
    key = new_key("burst")
    urls = deployment.base_urls
    delays = [0.0] * 12 + [SLOW_SECONDS * 0.5] * 12

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(delays), max_keepalive_connections=len(delays))
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS, limits=limits) as client:
            await asyncio.gather(*(client.get(url + "/healthz") for url in urls for _ in delays))

            async def one(index: int, delay: float) -> httpx.Response:
                await asyncio.sleep(delay)
                return await client.post(
                    urls[index % len(urls)] + "/slow",
                    content=json.dumps({"op": 1}).encode(),
                    headers={"Idempotency-Key": key, "content-type": "application/json"},
                )

            return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(delays))))

    outcomes = classify(asyncio.run(burst()), executed_status=202)
    assert len(outcomes.in_progress) >= 11, "the duplicates really overlapped the first run"
    assert runs(counter, key) == 1
    for url in urls:
        final = post(url, "/slow", key)
        assert final.headers.get("idempotent-replayed") == "true", final.text
        assert final.content == outcomes.executed[0].content
    assert runs(counter, key) == 1
