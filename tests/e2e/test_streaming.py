"""Streaming responses through the middleware under real servers.

``tests/e2e/streaming_app.py`` (Starlette, ASGI middleware) under uvicorn, on the in-memory
store (one worker) and on Redis (two workers, so a retry may land on the other process); and
the same endpoints in ``streaming_wsgi_app.py`` (Flask, WSGI middleware) under gunicorn on
Redis. Default config: 1 MiB response cap. A 20 MiB streamed response and an SSE stream must
arrive complete with and without a key; over the cap, a retry gets the documented 409
``idempotency-response-not-replayable`` (never a second run, never a truncated body); under
the cap, a retry replays the same bytes.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, Server, start_server
from tests.e2e.streaming_app import expected_events, expected_stream
from tests.redis_servers import RedisProcess

pytestmark = pytest.mark.timeout(60)

STREAM_MIB = 20
SSE_EVENTS = 200


#: param -> (server kind, target, store, workers)
STREAMING_SERVERS = {
    "asgi-memory": ("uvicorn", "tests.e2e.streaming_app:app", "memory", 1),
    "asgi-redis": ("uvicorn", "tests.e2e.streaming_app:app", "redis", 2),
    "wsgi-redis": ("gunicorn", "tests.e2e.streaming_wsgi_app:app", "redis", 2),
}


@pytest.fixture(scope="module", params=list(STREAMING_SERVERS))
def streaming_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind, target, store, workers = STREAMING_SERVERS[request.param]
    redis_url = None
    if store == "redis":
        redis_server: RedisProcess = request.getfixturevalue("redis_server")
        redis_url = redis_server.url
    server = start_server(
        f"streaming-{request.param}",
        kind,
        target,
        workers=workers,
        log_dir=tmp_path_factory.mktemp("streaming-logs"),
        redis_url=redis_url,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def expected_big() -> tuple[int, str]:
    return expected_stream(STREAM_MIB)


@dataclass
class Received:
    status: int
    headers: httpx.Headers
    size: int
    sha256: str
    first_chunk_after: float
    total: float


def post_streamed(server: Server, path: str, key: str | None) -> Received:
    """POST and read the body as it streams, hashing it on the way (never held whole)."""
    headers = {"Idempotency-Key": key} if key else {}
    digest = hashlib.sha256()
    size = 0
    first: float | None = None
    began = time.monotonic()
    with (
        httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client,
        client.stream("POST", path, headers=headers) as response,
    ):
        for chunk in response.iter_raw():
            if first is None:
                first = time.monotonic() - began
            digest.update(chunk)
            size += len(chunk)
        return Received(
            response.status_code,
            response.headers,
            size,
            digest.hexdigest(),
            first if first is not None else 0.0,
            time.monotonic() - began,
        )


def executions(server: Server) -> int:
    return int(
        httpx.get(server.base_url + "/executions", timeout=CLIENT_TIMEOUT_SECONDS).json()[
            "executions"
        ]
    )


def test_big_stream_without_key_arrives_complete_every_time(
    streaming_server: Server, expected_big: tuple[int, str]
) -> None:
    """No key: passed through untouched, chunked, complete; a repeat runs again."""
    before = executions(streaming_server)
    for _ in range(2):
        got = post_streamed(streaming_server, f"/stream?mib={STREAM_MIB}", key=None)
        assert got.status == 200
        assert (got.size, got.sha256) == expected_big
        assert "idempotent-replayed" not in got.headers
        assert got.headers.get("transfer-encoding") == "chunked"
    assert executions(streaming_server) == before + 2


def test_big_stream_with_key_over_cap_then_retry_gets_not_replayable(
    streaming_server: Server, expected_big: tuple[int, str]
) -> None:
    """With a key, 20 MiB > the 1 MiB cap: the first client gets every byte; retries get a
    409 problem (original status 200), and the handler never runs again."""
    key = f"big-{uuid.uuid4()}"
    before = executions(streaming_server)

    got = post_streamed(streaming_server, f"/stream?mib={STREAM_MIB}", key=key)

    assert got.status == 200
    assert (got.size, got.sha256) == expected_big
    assert "idempotent-replayed" not in got.headers
    for _ in range(3):  # on two workers, retries may land on either process
        retry = httpx.post(
            streaming_server.base_url + f"/stream?mib={STREAM_MIB}",
            headers={"Idempotency-Key": key},
            timeout=CLIENT_TIMEOUT_SECONDS,
        )
        assert retry.status_code == 409
        assert retry.headers["content-type"].startswith("application/problem+json")
        problem = retry.json()
        assert problem["type"].endswith("idempotency-response-not-replayable")
        assert problem["original_status"] == 200
        assert len(retry.content) < 1024  # a problem document, not a (truncated) body
    assert executions(streaming_server) == before + 1


def test_sse_without_key_arrives_complete(streaming_server: Server) -> None:
    expected = expected_events(SSE_EVENTS)
    for _ in range(2):
        got = post_streamed(streaming_server, f"/events?n={SSE_EVENTS}", key=None)
        assert got.status == 200
        assert got.headers["content-type"].startswith("text/event-stream")
        assert (got.size, got.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())


def test_sse_with_key_streams_then_retry_replays_identical_bytes(
    streaming_server: Server,
) -> None:
    """Under the cap: the first response still streams (first event long before the last),
    and retries replay exactly its bytes without running the handler again."""
    key = f"sse-{uuid.uuid4()}"
    expected = expected_events(SSE_EVENTS)
    before = executions(streaming_server)

    first = post_streamed(streaming_server, f"/events?n={SSE_EVENTS}", key=key)

    assert first.status == 200
    assert (first.size, first.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())
    assert "idempotent-replayed" not in first.headers
    # 200 events 5 ms apart take >= 1 s; a buffering middleware would deliver all at the end.
    assert first.total >= 1.0
    assert first.first_chunk_after < first.total / 2
    for _ in range(3):
        retry = httpx.post(
            streaming_server.base_url + f"/events?n={SSE_EVENTS}",
            headers={"Idempotency-Key": key},
            timeout=CLIENT_TIMEOUT_SECONDS,
        )
        assert retry.status_code == 200
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.headers["content-type"] == first.headers["content-type"]
        assert retry.content == expected
    assert executions(streaming_server) == before + 1


def test_sse_cut_short_by_the_client_runs_once_and_is_never_replayed_truncated(
    streaming_server: Server,
) -> None:
    """The client reads one event and hangs up; the handler has run. A retry must not run it
    again, and must not get the partial body as the stored response: the documented answers
    are the complete bytes (a body already in memory is copied whole when the server closes
    early) or the 409 not-replayable problem (a generator is closed, never drained).
    """
    key = f"cut-{uuid.uuid4()}"
    expected = expected_events(SSE_EVENTS)
    before = executions(streaming_server)
    with (
        httpx.Client(base_url=streaming_server.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client,
        client.stream(
            "POST", f"/events?n={SSE_EVENTS}", headers={"Idempotency-Key": key}
        ) as response,
    ):
        assert response.status_code == 200
        first_chunk = next(response.iter_raw())
        assert 0 < len(first_chunk) < len(expected)
    time.sleep(1.5)  # the server notices the disconnect and records the outcome

    retry = httpx.post(
        streaming_server.base_url + f"/events?n={SSE_EVENTS}",
        headers={"Idempotency-Key": key},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )

    assert executions(streaming_server) == before + 1, "the handler ran again"
    assert retry.status_code in (200, 409), retry.text
    if retry.status_code == 200:
        assert retry.headers.get("idempotent-replayed") == "true"
        assert retry.content == expected, f"{len(retry.content)} of {len(expected)} bytes"
    else:
        assert retry.json()["type"].endswith("idempotency-response-not-replayable")
