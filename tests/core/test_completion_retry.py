"""A completion the store refuses (a blip) is kept by the lease and written later: the handler
already ran, so the key must never free for a second run (review finding F2)."""

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


class Blip(InMemoryPersistenceLayer):
    """Refuses the first ``fails`` completions, as a store that blinked would."""

    def __init__(self, fails: int) -> None:
        super().__init__()
        self.fails = fails

    def _update_record(self, data_record: DataRecord) -> None:
        if self.fails:
            self.fails -= 1
            raise IdempotencyPersistenceLayerError("blip")
        super()._update_record(data_record)


CONFIG = IdempotencyConfig(lease_seconds=1)


def test_asgi_completion_refused_twice_is_written_by_the_lease() -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"paid"})

    async def call(middleware: Any) -> list[dict[str, Any]]:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/pay",
            "query_string": b"",
            "headers": [(b"idempotency-key", b"k")],
        }
        inbox = [{"type": "http.request", "body": b"", "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop(0) if inbox else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await middleware(scope, receive, send)
        return sent

    async def main() -> list[list[dict[str, Any]]]:
        middleware = IdempotencyMiddleware(app, Blip(fails=2), CONFIG)
        first = await call(middleware)
        await asyncio.sleep(1.6)  # past the lease: a released or abandoned claim is gone now
        return [first, await call(middleware)]

    first, retry = asyncio.run(main())
    assert first[0]["status"] == 201
    assert runs == [1]
    assert retry[0]["status"] == 201
    assert (b"idempotent-replayed", b"true") in retry[0]["headers"]
    assert retry[1]["body"] == b"paid"


def test_wsgi_completion_refused_twice_is_written_by_the_lease() -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Length", "4")])
        return [b"paid"]

    middleware = WSGIIdempotencyMiddleware(app, persistence_store=Blip(fails=2), config=CONFIG)

    def call() -> tuple[str, bytes, Any]:
        environ = create_environ("/pay", method="POST", headers={"Idempotency-Key": "k"})
        body, status, headers = run_wsgi_app(middleware, environ, buffered=True)
        return status, b"".join(body), headers

    assert call()[0].startswith("201")
    time.sleep(1.6)
    status, body, headers = call()
    assert runs == [1]
    assert status.startswith("201")
    assert body == b"paid"
    assert headers.get("Idempotent-Replayed") == "true"


class Interrupting(InMemoryPersistenceLayer):
    """The first completion write is interrupted (a signal handler's exception, Ctrl-C)."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupts = 1

    def _update_record(self, data_record: DataRecord) -> None:
        if self.interrupts:
            self.interrupts -= 1
            raise KeyboardInterrupt
        super()._update_record(data_record)


def test_wsgi_completion_write_interrupted_is_written_by_the_lease() -> None:
    # Before the fix the lease was left "closing" with nothing to write: the key stayed held
    # until max_lease_hold_seconds, then freed for a second run.
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Length", "4")])
        return [b"paid"]

    middleware = WSGIIdempotencyMiddleware(app, persistence_store=Interrupting(), config=CONFIG)

    def call() -> tuple[str, bytes, Any]:
        environ = create_environ("/pay", method="POST", headers={"Idempotency-Key": "k"})
        body, status, headers = run_wsgi_app(middleware, environ, buffered=True)
        return status, b"".join(body), headers

    with pytest.raises(KeyboardInterrupt):
        call()
    time.sleep(1.6)
    status, body, headers = call()
    assert runs == [1]
    assert status.startswith("201")
    assert body == b"paid"
    assert headers.get("Idempotent-Replayed") == "true"


class Outage(InMemoryPersistenceLayer):
    """Refuses every completion write until ``back`` is set (a store outage that outlasts
    ``max_lease_hold_seconds``)."""

    def __init__(self) -> None:
        super().__init__()
        self.back = threading.Event()

    def _update_record(self, data_record: DataRecord) -> None:
        if data_record.response_data and not self.back.is_set():
            raise IdempotencyPersistenceLayerError("store unavailable")
        super()._update_record(data_record)


def test_pending_completion_outlives_the_hold_cap() -> None:
    # Before the fix the hold cap dropped the pending completion: the write never came and
    # the key freed for a second run of a handler that had already run.
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Length", "4")])
        return [b"paid"]

    store = Outage()
    config = IdempotencyConfig(lease_seconds=0.2, max_lease_hold_seconds=0.4)
    middleware = WSGIIdempotencyMiddleware(app, persistence_store=store, config=config)

    def call() -> tuple[str, bytes, Any]:
        environ = create_environ("/pay", method="POST", headers={"Idempotency-Key": "k"})
        body, status, headers = run_wsgi_app(middleware, environ, buffered=True)
        return status, b"".join(body), headers

    assert call()[0].startswith("201")
    time.sleep(0.8)  # past the hold cap while the completion is still refused
    store.back.set()
    time.sleep(1.0)  # a few of the lease's retries (backoff capped at a fraction of the lease)
    status, body, headers = call()
    assert runs == [1]
    assert status.startswith("201")
    assert body == b"paid"
    assert headers.get("Idempotent-Replayed") == "true"


class RefusesCompletions(InMemoryPersistenceLayer):
    """Takes claims and renewals but refuses completions until ``until`` (monotonic): a store
    with room for a small claim and none for the response, say."""

    def __init__(self, until: float) -> None:
        super().__init__()
        self.until = until

    def _update_record(self, data_record: DataRecord) -> None:
        if time.monotonic() < self.until:
            raise IdempotencyPersistenceLayerError("no room for the response")
        super()._update_record(data_record)


def test_claim_stays_renewed_while_its_completion_is_refused() -> None:
    # Before the fix the lease retried only the completion: the in-progress claim lapsed after
    # one lease and a retry claimed the key and ran the handler a second time.
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Length", "4")])
        return [b"paid"]

    store = RefusesCompletions(until=time.monotonic() + 2.5)
    middleware = WSGIIdempotencyMiddleware(app, persistence_store=store, config=CONFIG)

    def call() -> tuple[str, bytes, Any]:
        environ = create_environ("/pay", method="POST", headers={"Idempotency-Key": "k"})
        body, status, headers = run_wsgi_app(middleware, environ, buffered=True)
        return status, b"".join(body), headers

    assert call()[0].startswith("201")
    time.sleep(1.6)  # more than the 1 s lease, while completions are still refused
    assert call()[0].startswith("409")
    time.sleep(2.0)  # the store takes the completion now; the lease writes it
    status, body, headers = call()
    assert runs == [1]
    assert status.startswith("201") and body == b"paid"
    assert headers.get("Idempotent-Replayed") == "true"


def test_no_lease_lost_reported_while_the_claim_is_kept_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before the fix the renewal made alongside each refused write never moved the hold's
    # lease end: after one lease every refusal was reported as a lost lease, while the claim
    # was in fact renewed all along.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("201 Created", [("Content-Length", "4")])
        return [b"paid"]

    store = RefusesCompletions(until=time.monotonic() + 0.8)
    config = IdempotencyConfig(lease_seconds=0.2)
    middleware = WSGIIdempotencyMiddleware(app, persistence_store=store, config=config)
    environ = create_environ("/pay", method="POST", headers={"Idempotency-Key": "k"})
    with caplog.at_level("WARNING", logger="idempotent_middleware"):
        body, status, _ = run_wsgi_app(middleware, environ, buffered=True)
        assert status.startswith("201") and b"".join(body) == b"paid"
        time.sleep(1.4)  # four leases of refusals, then the write lands
    assert store._records and all(r.status == "COMPLETED" for r in store._records.values())
    assert not [r for r in caplog.records if "lease lost" in r.getMessage()]
