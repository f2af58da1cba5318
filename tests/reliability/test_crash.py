"""Scenario 2: a worker is SIGKILLed inside a slow handler.

The dedicated app (``apps/``) runs with a 2 s lease; its handler writes its pid to Redis, so
the test kills exactly the worker that holds the claim. A duplicate sent before the kill, past
the first lease, still gets 409 (renewal kept the claim alive). After the kill every retry
gets 409 until the lease runs out, then the key runs exactly once more; the key is never
blocked longer than lease + 1 s after the kill.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from tests.redis_servers import RedisProcess
from tests.reliability._procs import HOST, gunicorn_command, uvicorn_command
from tests.reliability.conftest import Figures, Spawn
from tests.reliability.http_client import Response, post_json, raw_request

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

LEASE = 2.0

SERVERS = {
    "asgi-uvicorn-2": lambda port: uvicorn_command("tests.reliability.apps.asgi_app:app", port, 2),
    "wsgi-gunicorn-2": lambda port: gunicorn_command(
        "tests.reliability.apps.wsgi_app:app", port, 2
    ),
}


def _wait_for(redis: RedisProcess, name: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = redis.cli("GET", name)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{name} never appeared in Redis")


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_name", list(SERVERS))
def test_killed_worker_blocks_key_for_one_lease_only(
    server_name: str, redis_server: RedisProcess, redis_url: str, spawn: Spawn, figures: Figures
) -> None:
    server = spawn(
        server_name, SERVERS[server_name], {"REDIS_URL": redis_url, "REL_LEASE_SECONDS": str(LEASE)}
    )
    key = f"crash-{server_name}"
    spec = {"sleep_first": 30, "sleep": 0}
    victim = socket.create_connection((HOST, server.port), timeout=5)
    try:
        victim.sendall(raw_request("/work", key, json.dumps(spec).encode()))
        pid = int(_wait_for(redis_server, f"rel:pid:{key}"))
        claimed_at = time.monotonic()
        assert pid != server.process.pid, "the handler must run in a worker, not the master"

        # Past the first lease the claim is alive only because the worker renews it.
        time.sleep(LEASE * 1.25)
        duplicate = post_json(server.port, "/work", key, spec)
        assert duplicate.status == 409, (duplicate.status, duplicate.body)

        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        statuses: list[int] = []
        retry_afters: list[int] = []
        first: Response | None = None
        while time.monotonic() - killed_at < LEASE + 5 and len(statuses) < 500:
            response = post_json(server.port, "/work", key, spec, timeout=5)
            statuses.append(response.status)
            if response.status != 409:
                first = response
                break
            retry_afters.append(int(response.header("retry-after") or 0))
            time.sleep(0.05)
        unblocked_after_kill = time.monotonic() - killed_at
        unblocked_after_claim = time.monotonic() - claimed_at
    finally:
        victim.close()

    assert first is not None, f"still blocked {LEASE + 5}s after the kill: {statuses[-5:]}"
    assert first.status == 201 and not first.replayed, (first.status, first.body)
    assert first.json()["run"] == 2
    assert unblocked_after_kill <= LEASE + 1.0
    assert retry_afters and all(1 <= value <= LEASE for value in retry_afters)
    # The outcome is recorded before the response's last byte leaves: the very next request
    # is a replay.
    replay = post_json(server.port, "/work", key, spec)
    assert replay.replayed and replay.body == first.body
    assert redis_server.cli("GET", f"rel:runs:{key}") == "2"  # the killed run and the rerun
    assert redis_server.cli("LRANGE", f"rel:done:{key}", "0", "-1") == "2"

    figures(
        "crash",
        server=server_name,
        lease_seconds=LEASE,
        requests=len(statuses) + 3,
        executions=2,
        completed_executions=1,
        conflicts_409=statuses.count(409) + 1,
        blocked_after_kill_seconds=round(unblocked_after_kill, 3),
        blocked_after_claim_seconds=round(unblocked_after_claim, 3),
        max_blocked_allowed_seconds=LEASE + 1.0,
    )
