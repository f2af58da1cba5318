"""Scenario 1: exactly once under load, on the examples served by real multi-process servers.

200 requests over 100 keys (each key twice), all sent at the same moment (barrier on the last
byte) to four worker processes sharing one Redis: every key runs exactly once, nothing answers
5xx, and every duplicate is either a 409 or the executed response byte for byte plus
``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import pytest

from tests.redis_servers import RedisProcess
from tests.reliability._procs import gunicorn_command, uvicorn_command
from tests.reliability.conftest import Figures, Spawn
from tests.reliability.http_client import Response, fire_together, raw_request

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

KEYS = 100
SLOW_KEYS = 50
COPIES = 2

SERVERS = {
    "fastapi-uvicorn-4": lambda port: uvicorn_command("examples.fastapi_app:app", port, 4),
    # The Flask example's documented command (gthread: 32 concurrent requests, more races).
    "flask-gunicorn-4": lambda port: gunicorn_command(
        "examples.flask_app:app", port, 4, "-k", "gthread", "--threads", "8"
    ),
}


def _executions(redis: RedisProcess) -> int:
    return int(redis.cli("GET", "examples:executions") or 0)


def _check_key(key: str, responses: list[Response]) -> tuple[int, int]:
    """Assert one execution and identical replays for one key; return (replays, conflicts)."""
    executed = [r for r in responses if r.status == 201 and not r.replayed]
    assert len(executed) == 1, f"{key}: {len(executed)} executed responses"
    original = executed[0]
    replays = conflicts = 0
    for response in responses:
        if response is original:
            continue
        if response.status == 409:
            assert response.header("retry-after") is not None
            assert response.header("content-type") == "application/problem+json"
            conflicts += 1
            continue
        assert response.replayed, f"{key}: duplicate {response.status} is not a replay"
        assert response.status == original.status
        assert response.body == original.body, f"{key}: replayed body differs"
        assert response.app_headers() == original.app_headers(), f"{key}: replayed headers differ"
        replays += 1
    return replays, conflicts


def _storm(
    port: int, path: str, payloads: dict[str, dict[str, object]]
) -> dict[str, list[Response]]:
    """Send each payload COPIES times at the same moment; group the responses by key."""
    batch = [
        (key, raw_request(path, key, json.dumps(payload).encode()))
        for key, payload in payloads.items()
        for _ in range(COPIES)
    ]
    random.Random(1).shuffle(batch)
    results = fire_together(port, [raw for _, raw in batch], timeout=60)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} requests failed: {failures[:3]}"
    by_key: dict[str, list[Response]] = defaultdict(list)
    for (key, _), response in zip(batch, results, strict=True):
        assert isinstance(response, Response)
        by_key[key].append(response)
    return by_key


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("server_name", list(SERVERS))
def test_exactly_once_under_concurrent_duplicates(
    server_name: str,
    redis_server: RedisProcess,
    redis_url: str,
    spawn: Spawn,
    figures: Figures,
) -> None:
    server = spawn(server_name, SERVERS[server_name], {"REDIS_URL": redis_url})
    command = "REDIS_URL=redis://127.0.0.1:PORT/0 python " + " ".join(server.command[1:])

    # Phase 1: /orders (fast handler), 100 keys x 2, every request at the same moment.
    orders = {f"load-{i:03d}": {"sku": f"sku-{i}", "qty": i} for i in range(KEYS)}
    started = time.monotonic()
    by_key = _storm(server.port, "/orders", orders)
    storm_seconds = time.monotonic() - started
    responses = [r for group in by_key.values() for r in group]
    server_errors = [r for r in responses if r.status >= 500]
    assert not server_errors, [(r.status, r.body[:200]) for r in server_errors]
    replays = conflicts = 0
    for key, group in by_key.items():
        replayed, conflicted = _check_key(key, group)
        replays += replayed
        conflicts += conflicted
    assert _executions(redis_server) == KEYS

    # Phase 2: every key again after the storm: replays only, byte for byte, no new run.
    originals = {
        key: next(r for r in group if r.status == 201 and not r.replayed)
        for key, group in by_key.items()
    }
    again = fire_together(
        server.port,
        [raw_request("/orders", key, json.dumps(p).encode()) for key, p in orders.items()],
        timeout=60,
    )
    for key, response in zip(orders, again, strict=True):
        assert isinstance(response, Response), response
        assert response.replayed and response.body == originals[key].body
        assert response.app_headers() == originals[key].app_headers()
    assert _executions(redis_server) == KEYS
    figures(
        "exactly-once",
        server=server_name,
        endpoint="/orders",
        requests=len(responses) + len(again),
        keys=KEYS,
        executions=_executions(redis_server),
        responses_5xx=len(server_errors),
        replays=replays + len(again),
        conflicts_409=conflicts,
        storm_seconds=round(storm_seconds, 3),
        command=command,
    )

    # Phase 3: /slow (the handler sleeps 1 s): the duplicates now meet the claim in flight.
    slow = {f"slow-{i:03d}": {"sku": f"slow-{i}", "qty": i} for i in range(SLOW_KEYS)}
    by_key = _storm(server.port, "/slow", slow)
    slow_conflicts = sum(r.status == 409 for group in by_key.values() for r in group)
    assert all(r.status < 500 for group in by_key.values() for r in group)
    for key, group in by_key.items():
        executed = [r for r in group if r.status == 202 and not r.replayed]
        assert len(executed) == 1, (key, [(r.status, r.body) for r in group])
    assert _executions(redis_server) == KEYS + SLOW_KEYS
    figures(
        "exactly-once-in-flight",
        server=server_name,
        endpoint="/slow",
        requests=SLOW_KEYS * COPIES,
        keys=SLOW_KEYS,
        executions=_executions(redis_server) - KEYS,
        responses_5xx=0,
        conflicts_409=slow_conflicts,
        command=command,
    )
