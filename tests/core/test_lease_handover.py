"""Where a pending completion and an overdue loop lease go when their first home cannot do
the work: the renewer thread writes a loop's pending completion (it outlives the loop), a
store without blocking methods keeps it on its loop, and a renewal that was already on its
way when the completion was refused never counts as that completion written."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from werkzeug.test import create_environ, run_wsgi_app

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    IdempotencyPersistenceLayerError,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware.persistence.base import DataRecord
from idempotent_middleware.persistence.record import STATUS_COMPLETED

Message = dict[str, Any]


class AsyncOnly(InMemoryPersistenceLayer):
    """A store reachable only from an event loop (an async-only client): its blocking
    methods fail as a layer given only ``async_client=`` does; the first completion is
    refused (a blip)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = False
        self.on_loop = threading.local()

    def _blocking(self) -> None:
        if not getattr(self.on_loop, "yes", False):
            raise TypeError("this layer has only an async client")

    def _update_record(self, data_record: DataRecord) -> None:
        self._blocking()
        if not self.refused:
            self.refused = True
            raise IdempotencyPersistenceLayerError("blip")
        super()._update_record(data_record)

    def _renew_lease(self, data_record: DataRecord) -> None:
        self._blocking()
        super()._renew_lease(data_record)

    async def _update_record_async(self, data_record: DataRecord) -> None:
        self.on_loop.yes = True
        try:
            self._update_record(data_record)
        finally:
            self.on_loop.yes = False

    async def _renew_lease_async(self, data_record: DataRecord) -> None:
        self.on_loop.yes = True
        try:
            self._renew_lease(data_record)
        finally:
            self.on_loop.yes = False


async def call(app: Any, key: bytes) -> list[Message]:
    inbox: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/pay",
        "query_string": b"",
        "headers": [(b"idempotency-key", key)],
    }
    await app(scope, receive, send)
    return sent


def test_a_store_without_blocking_methods_keeps_the_pending_completion_on_its_loop() -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"paid"})

    store = AsyncOnly()
    middleware = IdempotencyMiddleware(app, store, IdempotencyConfig(lease_seconds=0.2))

    async def main() -> list[list[Message]]:
        first = await call(middleware, b"k")
        await asyncio.sleep(0.6)  # the thread fails to write it, the loop writes it
        return [first, await call(middleware, b"k")]

    first, retry = asyncio.run(main())
    assert store.refused
    assert first[0]["status"] == 201
    assert runs == [1]
    assert retry[0]["status"] == 201
    assert (b"idempotent-replayed", b"true") in retry[0]["headers"]


class RenewalInFlight(InMemoryPersistenceLayer):
    """A renewal that is still on its way when the first completion is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.renewing = threading.Event()
        self.go = threading.Event()
        self.refused = False

    def _renew_lease(self, data_record: DataRecord) -> None:
        if not self.refused:
            self.renewing.set()
            self.go.wait(5)
        super()._renew_lease(data_record)

    def _update_record(self, data_record: DataRecord) -> None:
        if not self.refused:
            assert self.renewing.wait(5)
            self.refused = True
            raise IdempotencyPersistenceLayerError("blip")
        super()._update_record(data_record)


def test_a_renewal_sent_before_the_completion_was_refused_is_not_that_completion() -> None:
    # Before the fix the renewal's success ended the hold as "recorded on a later attempt":
    # the completion was never written and the key freed after the lease.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("201 Created", [("Content-Length", "4")])
        return [b"paid"]

    store = RenewalInFlight()
    config = IdempotencyConfig(lease_seconds=0.2)
    middleware = WSGIIdempotencyMiddleware(app, persistence_store=store, config=config)
    environ = create_environ("/pay", method="POST", headers={"Idempotency-Key": "k"})
    body, status, _ = run_wsgi_app(middleware, environ, buffered=True)
    assert status.startswith("201") and b"".join(body) == b"paid"
    assert store.refused
    store.go.set()  # the renewal lands now, after the completion was left to the lease
    time.sleep(0.6)
    assert [record.status for record in store._records.values()] == [STATUS_COMPLETED]


EXITING = r"""
import logging
from idempotent_middleware import IdempotencyConfig, IdempotencyPersistenceLayerError
from idempotent_middleware import InMemoryPersistenceLayer, idempotent_function

logging.basicConfig(level=logging.INFO)

class Refuses(InMemoryPersistenceLayer):
    def _update_record(self, data_record):
        raise IdempotencyPersistenceLayerError("no room for the response")

@idempotent_function(
    data_keyword_argument="x",
    persistence_store=Refuses(),
    config=IdempotencyConfig(lease_seconds=30),
)
def job(x):
    return x

assert job(x=1) == 1
"""


def test_a_completion_still_refused_at_exit_is_tried_and_logged() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("IDEMPOTENCY_DISABLED", None)
    env.pop("POWERTOOLS_IDEMPOTENCY_DISABLED", None)
    done = subprocess.run(
        [sys.executable, "-c", EXITING], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "not written before the process exited" in done.stderr


class CarriedRenewal(InMemoryPersistenceLayer):
    """Renewals are carried by a task of their own (a pipelined client's sender) that gets
    through only after the release went out: cancelling the lease's task cannot stop it."""

    def __init__(self) -> None:
        super().__init__()
        self.issued: asyncio.Event | None = None
        self.released: asyncio.Event | None = None
        self.carriers: set[asyncio.Task[None]] = set()

    async def _carry(self, data_record: DataRecord) -> None:
        assert self.released is not None
        await self.released.wait()
        super()._renew_lease(data_record)

    async def _renew_lease_async(self, data_record: DataRecord) -> None:
        assert self.issued is not None
        self.issued.set()
        carrier = asyncio.get_running_loop().create_task(self._carry(data_record))
        self.carriers.add(carrier)
        await asyncio.shield(carrier)

    async def _delete_record_async(self, data_record: DataRecord) -> None:
        super()._delete_record(data_record)
        assert self.released is not None
        self.released.set()


def test_async_function_release_is_not_undone_by_a_renewal_in_flight() -> None:
    from idempotent_middleware import idempotent_function

    store = CarriedRenewal()
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=0.2),
    )
    async def job(x: int) -> int:
        runs.append(x)
        if len(runs) == 1:
            assert store.issued is not None
            await store.issued.wait()  # outlives half its lease: a renewal is on its way
            raise ValueError("declined")  # released: a retry may run it again
        return x

    async def main() -> int:
        store.issued, store.released = asyncio.Event(), asyncio.Event()
        with pytest.raises(ValueError):
            await job(x=1)
        await asyncio.gather(*store.carriers)  # the renewal has landed
        return await job(x=1)  # the caller retries at once

    assert asyncio.run(main()) == 1
    assert runs == [1, 1]


def test_async_function_blocking_its_loop_keeps_its_claim() -> None:
    # Before the backstop nothing renewed the claim while the loop was blocked: a retry in
    # another worker (thread here) claimed the lapsed key and ran the function again.
    from idempotent_middleware import IdempotencyAlreadyInProgressError, idempotent_function

    store = InMemoryPersistenceLayer()
    runs: list[str] = []
    started = threading.Event()

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=0.4),
    )
    async def job(x: int) -> int:
        runs.append(threading.current_thread().name)
        started.set()
        time.sleep(1.2)  # a blocking call inside async def: the loop's timer cannot fire
        return x

    first = threading.Thread(target=lambda: asyncio.run(job(x=1)), name="worker-1")
    first.start()
    assert started.wait(5)
    time.sleep(0.8)  # two leases later, the retry reaches another worker
    with pytest.raises(IdempotencyAlreadyInProgressError):
        asyncio.run(job(x=1))
    first.join()
    assert runs == ["worker-1"]
