"""A real retrying HTTP client through a network that loses responses: executions == operations.

urllib3's ``Retry`` retries POST (``allowed_methods`` includes it) on a broken connection and on
409, with one fixed ``Idempotency-Key`` per logical operation, as payment SDKs do. Between the
client and the server (two workers, the suite's Redis) runs ``HttpFaultProxy``: for most
operations it cuts the first attempt's response after a few bytes, drops a finished response,
or hangs up before the response came (the server sees its client leave mid-handler), and some
operations meet two faults in a row. Whatever happened on the wire, every operation ran exactly
once, and every client that got a response got its own operation's response.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import urllib3
from urllib3.util.retry import Retry

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, ServerGroup
from tests.e2e.deployments import runs, start_deployment, stored_body
from tests.e2e.http_fault_proxy import HttpFaultProxy
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

OPERATIONS = 50
CLIENTS = 8
#: The handler takes this long, so the proxy's hang-up (``ABORT_AFTER``) lands while it runs.
HANDLER_SECONDS = 0.4
ABORT_AFTER = 0.15
#: Operation ``i``'s first attempts meet ``FAULT_PLANS[i % len(FAULT_PLANS)]``, in order.
FAULT_PLANS: list[tuple[str, ...]] = [
    (),
    ("cut",),
    ("drop",),
    ("abort",),
    ("cut", "drop"),
    ("abort", "cut"),
    ("drop", "cut"),
]
PATH = f"/slow?seconds={HANDLER_SECONDS}"
KEY_HEADER = re.compile(rb"\r\nidempotency-key:([^\r\n]+)", re.I)


def retrying_client() -> urllib3.PoolManager:
    retry = Retry(
        total=5,
        allowed_methods=frozenset({"POST"}),  # not retried by default: we send a key
        status_forcelist=(409,),  # in progress elsewhere: ask again shortly
        backoff_factor=0.1,
        raise_on_status=False,  # the last answer, whatever it is, is what the caller sees
    )
    timeout = urllib3.Timeout(connect=2.0, read=CLIENT_TIMEOUT_SECONDS)
    return urllib3.PoolManager(maxsize=CLIENTS, retries=retry, timeout=timeout)


class Planner:
    """The proxy's plan: the n-th attempt of an operation meets that operation's n-th fault."""

    def __init__(self, keys: dict[str, int]) -> None:
        self.keys = keys
        self.attempts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, head: bytes) -> str | None:
        found = KEY_HEADER.search(head)
        if found is None:
            return None
        key = found.group(1).decode().strip()
        with self._lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        plan = FAULT_PLANS[self.keys[key] % len(FAULT_PLANS)]
        return plan[attempt - 1] if attempt <= len(plan) else None


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn", "django-asgi-uvicorn"])
def deployment(
    request: pytest.FixtureRequest,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerGroup]:
    name: str = request.param
    group = start_deployment(name, redis_server.url, tmp_path_factory.mktemp(f"retry-{name}"))
    try:
        yield group
    finally:
        group.stop()


def test_retrying_client_through_lossy_network_runs_each_operation_once(
    deployment: ServerGroup, redis_server: RedisProcess
) -> None:
    batch = uuid.uuid4().hex[:8]
    keys = {f"retry-{batch}-{op}": op for op in range(OPERATIONS)}
    planner = Planner(keys)
    proxy = HttpFaultProxy(deployment.ports[0], planner, abort_after=ABORT_AFTER)
    client = retrying_client()
    counter = redis.Redis.from_url(redis_server.url)

    def operation(key: str) -> urllib3.BaseHTTPResponse:
        return client.request(
            "POST",
            f"http://127.0.0.1:{proxy.port}{PATH}",
            body=json.dumps({"op": keys[key]}).encode(),
            # One request per connection, so the proxy's fault hits exactly one attempt.
            headers={
                "Idempotency-Key": key,
                "content-type": "application/json",
                "connection": "close",
            },
        )

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = dict(zip(keys, pool.map(operation, keys), strict=True))
        executions = {key: runs(counter, key) for key in keys}
        bodies = {key: stored_body(counter, key) for key in keys}
    finally:
        proxy.close()
        client.clear()
        counter.close()

    planned = collections.Counter(
        fault for op in keys.values() for fault in FAULT_PLANS[op % len(FAULT_PLANS)]
    )
    attempts = {op: planner.attempts[key] for key, op in keys.items()}
    assert proxy.injected == planned, f"planned faults not all injected; attempts: {attempts}"
    twice = {key: n for key, n in executions.items() if n != 1}
    assert not twice, f"operations that did not run exactly once: {twice}"
    assert sum(executions.values()) == OPERATIONS

    for key, op in keys.items():
        answer = answers[key]
        plan = FAULT_PLANS[op % len(FAULT_PLANS)]
        assert answer.status < 500, (key, answer.status, answer.data[:300])
        if answer.status == 409:
            # Only a run its client left may end without a replayable answer (executed,
            # outcome unknown); it must say so with a problem of its own, not "in progress".
            problem = json.loads(answer.data)
            assert "abort" in plan, (key, plan, problem)
            assert not problem["type"].endswith("/idempotency-key-in-progress"), problem
            continue
        assert answer.status == 202, (key, answer.status, answer.data[:300])
        assert json.loads(answer.data)["run"] == 1
        assert answer.data == bodies[key], f"{key} got a response that is not its run's"
        replayed = answer.headers.get("idempotent-replayed") == "true"
        assert replayed == bool(plan), (key, plan, replayed)
