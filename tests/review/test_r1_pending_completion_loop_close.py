"""R1: a completion the store refused once is left to the event loop's lease; when that loop
ends (``asyncio.run`` per job, a server's shutdown) the write is dropped and the key frees
after one lease, so the next call with the key runs the function a second time.

The sync twin (``tests/function/test_completion_write.py``) passes: its renewer thread
outlives the call and writes the completion.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyPersistenceLayerError,
    InMemoryPersistenceLayer,
    idempotent_function,
)
from idempotent_middleware.persistence.base import DataRecord


class OneFailedCompletion(InMemoryPersistenceLayer):
    """The first completion write fails (a store blip); every later one lands."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def _update_record(self, data_record: DataRecord) -> None:
        if not self.failed:
            self.failed = True
            raise IdempotencyPersistenceLayerError("blip")
        super()._update_record(data_record)


@pytest.fixture(autouse=True)
def _enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDEMPOTENCY_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)


def test_r1_async_function_per_job_loop_runs_twice_after_one_failed_completion() -> None:
    store = OneFailedCompletion()
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=0.2),
    )
    async def job(x: int) -> int:
        runs.append(x)
        return x

    # One job, one event loop (Celery/RQ/cron code calling async code does this).
    assert asyncio.run(job(x=1)) == 1
    assert store.failed  # the first completion write failed and was left to the lease
    time.sleep(0.6)  # three leases later, the redelivered job comes
    assert asyncio.run(job(x=1)) == 1
    assert runs == [1], "the function ran again: its pending completion died with its loop"


CHILD = r"""
import sys
from idempotent_middleware import IdempotencyConfig, IdempotencyPersistenceLayerError
from idempotent_middleware import RedisPersistenceLayer, idempotent_function

class OneFailedCompletion(RedisPersistenceLayer):
    failed = False

    def _update_record(self, data_record):
        if not self.failed:
            self.failed = True
            raise IdempotencyPersistenceLayerError("blip")
        super()._update_record(data_record)

url, runs = sys.argv[1], sys.argv[2]

@idempotent_function(
    data_keyword_argument="x",
    persistence_store=OneFailedCompletion(url=url),
    config=IdempotencyConfig(lease_seconds=float(sys.argv[3])),
)
def job(x):
    with open(runs, "a") as out:
        out.write("run\n")
    return x

assert job(x=1) == 1
# The worker exits normally right after (gunicorn --max-requests, a Celery child recycled):
# the completion left to the renewer thread is never written.
"""


def test_r1b_pending_completion_dies_with_a_worker_that_exits(
    redis_url: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("IDEMPOTENCY_DISABLED", None)
    env.pop("POWERTOOLS_IDEMPOTENCY_DISABLED", None)
    # A 30 s lease retries a failed completion after 1.5 s: the worker is gone by then.
    lease = "2"
    for _ in range(2):  # the job, then its redelivery once the first worker's lease lapsed
        subprocess.run(
            [sys.executable, "-c", CHILD, redis_url, str(runs), lease],
            env=env,
            check=True,
            timeout=60,
        )
        time.sleep(float(lease) * 1.5)
    assert runs.read_text().count("run") == 1, "the redelivered job ran the function again"


def test_r1c_asgi_server_stopping_after_one_failed_completion_runs_twice() -> None:
    """The HTTP twin: a response whose completion the store refused once is left to the
    loop's lease; the server stops (a deploy: uvicorn ends its loop once requests are done)
    and the client's retry after one lease reaches the new server and runs the handler."""
    from typing import Any

    from idempotent_middleware import IdempotencyMiddleware

    store = OneFailedCompletion()
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"charged"})

    middleware = IdempotencyMiddleware(app, store, IdempotencyConfig(lease_seconds=0.2))

    async def serve_one() -> int:
        inbox: list[dict[str, Any]] = [{"type": "http.request", "body": b"{}"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop(0)
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/charge",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"idempotency-key", b"r1c")],
        }
        await middleware(scope, receive, send)
        return int(sent[0]["status"])

    assert asyncio.run(serve_one()) == 201  # the server's loop ends after this request
    time.sleep(0.6)
    assert asyncio.run(serve_one()) == 201  # the restarted server answers the retry
    assert runs == [1], "the handler ran again: its pending completion died with the loop"
