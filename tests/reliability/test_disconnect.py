"""Scenario 6: the client closes its socket while the request is being handled.

Real servers (uvicorn for ASGI, gunicorn for WSGI) run the dedicated apps (``apps/``). After
the client is gone, a retry with the same key must get either the replay of the recorded
outcome, or (when the handler raised, so the claim was released) a fresh run; it must never
hang and the handler must never run twice for one completed execution.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.redis_servers import RedisProcess
from tests.reliability._procs import (
    HOST,
    ServerProcess,
    free_port,
    gunicorn_command,
    spawn_server,
    uvicorn_command,
)
from tests.reliability.conftest import Figures
from tests.reliability.http_client import Response, post_until_settled, raw_request

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

SETTLE_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def servers(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    logs = tmp_path_factory.mktemp("disconnect-logs")
    env = {"REDIS_URL": redis_server.url, "REL_LEASE_SECONDS": "5"}
    started: dict[str, ServerProcess] = {}
    try:
        for name, command in (
            ("asgi", lambda port: uvicorn_command("tests.reliability.apps.asgi_app:app", port, 1)),
            ("wsgi", lambda port: gunicorn_command("tests.reliability.apps.wsgi_app:app", port, 1)),
        ):
            port = free_port()
            started[name] = spawn_server(f"disconnect-{name}", command(port), port, env, logs)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _send_and_hang_up(
    port: int,
    path: str,
    key: str,
    body: bytes,
    *,
    after: float,
    sent: int | None = None,
    wait_for: bytes | None = None,
) -> bytes:
    """Send (part of) a request, wait ``after`` s or until ``wait_for`` arrives, then close."""
    raw = raw_request(path, key, body)
    if sent is not None:
        raw = raw[: len(raw) - len(body) + sent]
    received = b""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(raw)
        deadline = time.monotonic() + after
        if wait_for is not None:
            sock.settimeout(0.1)
            while wait_for not in received and time.monotonic() < deadline:
                try:
                    received += sock.recv(4096)
                except TimeoutError:
                    continue
        else:
            time.sleep(after)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return received


def _settle(port: int, path: str, key: str, spec: dict[str, Any]) -> tuple[Response, int, float]:
    """Retry until the answer is no longer "in progress"; bounded."""
    return post_until_settled(port, path, key, spec, timeout=SETTLE_TIMEOUT)


def _runs(redis: RedisProcess, key: str) -> int:
    return int(redis.cli("GET", f"rel:runs:{key}") or 0)


@pytest.mark.slow
@pytest.mark.timeout(40)
@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_hang_up_while_handler_runs_then_retry_replays(
    adapter: str,
    servers: dict[str, ServerProcess],
    redis_server: RedisProcess,
    figures: Figures,
) -> None:
    port = servers[adapter].port
    key = f"hangup-completed-{adapter}-{time.time_ns()}"
    spec = {"sleep_first": 1.0}
    _send_and_hang_up(port, "/work", key, json.dumps(spec).encode(), after=0.3)
    time.sleep(1.0)  # the handler finishes meanwhile, and writes to a closed socket
    response, conflicts, waited = _settle(port, "/work", key, spec)
    runs = _runs(redis_server, key)
    figures(
        "disconnect",
        adapter=adapter,
        case="handler-completes",
        executions=runs,
        retry_status=response.status,
        retry_replayed=response.replayed,
        retry_409_while_running=conflicts,
        retry_settled_seconds=round(waited, 3),
    )
    assert waited < SETTLE_TIMEOUT
    assert response.status == 201, (response.status, response.body)
    assert response.replayed, f"the retry ran the handler again (run {response.json()['run']})"
    assert response.json()["run"] == 1 and runs == 1


@pytest.mark.slow
@pytest.mark.timeout(40)
@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_hang_up_while_handler_fails_then_retry_runs_again(
    adapter: str,
    servers: dict[str, ServerProcess],
    redis_server: RedisProcess,
    figures: Figures,
) -> None:
    port = servers[adapter].port
    key = f"hangup-raised-{adapter}-{time.time_ns()}"
    spec = {"sleep_first": 0.6, "fail_first": True}
    _send_and_hang_up(port, "/work", key, json.dumps(spec).encode(), after=0.2)
    time.sleep(0.8)
    response, conflicts, waited = _settle(port, "/work", key, spec)
    assert waited < SETTLE_TIMEOUT
    assert response.status == 201 and not response.replayed, (response.status, response.body)
    assert response.json()["run"] == 2  # released after the failure, so it really ran again
    replay, _, _ = _settle(port, "/work", key, spec)
    assert replay.replayed and replay.body == response.body
    assert _runs(redis_server, key) == 2
    assert redis_server.cli("LRANGE", f"rel:failed:{key}", "0", "-1") == "1"
    assert redis_server.cli("LRANGE", f"rel:done:{key}", "0", "-1") == "2"
    figures(
        "disconnect",
        adapter=adapter,
        case="handler-raises",
        executions=2,
        failed_executions=1,
        retry_409_while_running=conflicts,
        retry_status=response.status,
        retry_settled_seconds=round(waited, 3),
    )


@pytest.mark.slow
@pytest.mark.timeout(40)
@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_hang_up_in_the_middle_of_the_body_does_not_decide_the_key(
    adapter: str,
    servers: dict[str, ServerProcess],
    redis_server: RedisProcess,
    figures: Figures,
) -> None:
    port = servers[adapter].port
    key = f"hangup-body-{adapter}-{time.time_ns()}"
    # The first run would fail loudly if it ever ran: the key must stay free for the retry.
    spec = {"sleep_first": 0, "pad": "x" * 200}
    body = json.dumps(spec).encode()
    _send_and_hang_up(port, "/work", key, body, after=0.3, sent=len(body) - 20)
    time.sleep(0.3)
    response, _, waited = _settle(port, "/work", key, spec)
    figures(
        "disconnect",
        adapter=adapter,
        case="body-cut-short",
        retry_settled_seconds=round(waited, 3),
        retry_status=response.status,
        executions=_runs(redis_server, key),
    )
    assert response.status == 201 and not response.replayed, (response.status, response.body)
    assert _runs(redis_server, key) == 1


@pytest.mark.slow
@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    "adapter",
    [
        "asgi",
        "wsgi",
    ],
)
def test_hang_up_in_the_middle_of_a_stream_never_replays_truncated_nor_reruns(
    adapter: str,
    servers: dict[str, ServerProcess],
    redis_server: RedisProcess,
    figures: Figures,
) -> None:
    port = servers[adapter].port
    key = f"hangup-stream-{adapter}-{time.time_ns()}"
    spec = {"chunks": 5, "delay": 0.2}
    got = _send_and_hang_up(
        port, "/stream", key, json.dumps(spec).encode(), after=3, wait_for=b"chunk 0"
    )
    assert b"chunk 0" in got
    time.sleep(1.5)  # past the end the stream would have had
    response, _, waited = _settle(port, "/stream", key, spec)
    runs = _runs(redis_server, key)
    figures(
        "disconnect",
        adapter=adapter,
        case="stream-cut-short",
        retry_settled_seconds=round(waited, 3),
        retry_status=response.status,
        retry_replayed=response.replayed,
        retry_chunks=response.body.count(b"chunk "),
        executions=runs,
    )
    assert runs == 1, f"the handler ran {runs} times"
    if response.status == 200:  # a replay must be the whole stream
        assert response.replayed and response.body.count(b"chunk ") == 5, response.body
    else:  # or: executed, response not replayable
        assert response.status == 409 and b"not-replayable" in response.body, response.body
