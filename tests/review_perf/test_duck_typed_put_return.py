"""A store that is not a ``BasePersistenceLayer`` subclass (a wrapper delegating to one) is
claimed with ``_put_record``, whose contract is to return nothing and raise
``IdempotencyItemAlreadyExistsError`` on a conflict. A wrapper that returns what it stored
(a common habit: ``return record``) must still win its claim: the return value is not
"the record that holds the key", else the claim answers its own request 409 and stays in
progress for a lease.
"""

from __future__ import annotations

import asyncio
from typing import Any

from idempotent_middleware import (
    DataRecord,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from tests.reliability._inprocess import call_asgi, wsgi_call

HEADERS = [("Content-Type", "application/json"), ("Idempotency-Key", "duck")]


class _Wrapper:
    """Delegates everything to an inner layer; its claim returns the stored record."""

    def __init__(self) -> None:
        self.inner = InMemoryPersistenceLayer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _put_record(self, data_record: DataRecord) -> DataRecord:
        self.inner._put_record(data_record)
        return data_record

    async def _put_record_async(self, data_record: DataRecord) -> DataRecord:
        self.inner._put_record(data_record)
        return data_record


def test_wsgi_a_wrapper_returning_its_record_wins_its_claim() -> None:
    runs: list[int] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"paid"]

    middleware = WSGIIdempotencyMiddleware(app, _Wrapper())  # type: ignore[arg-type]
    first, retry = (wsgi_call(middleware, "POST", "/pay", HEADERS, b"{}") for _ in range(2))
    assert (first.status, first.body) == (201, b"paid"), first
    assert (retry.status, retry.body, retry.replayed) == (201, b"paid", True), retry
    assert runs == [1]


def test_asgi_a_wrapper_returning_its_record_wins_its_claim() -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"paid"})

    middleware = IdempotencyMiddleware(app, _Wrapper())  # type: ignore[arg-type]
    headers = [(name.lower().encode(), value.encode()) for name, value in HEADERS]

    async def main() -> list[Any]:
        return [
            await call_asgi(middleware, "POST", "/pay", headers, b"{}", None, b"") for _ in range(2)
        ]

    first, retry = asyncio.run(main())
    assert (first.status, first.body) == (201, b"paid"), first
    assert (retry.status, retry.body, retry.replayed) == (201, b"paid", True), retry
    assert runs == [1]
