"""The record of a request's outcome is written in a task of its own from its first step.

A write started in the request's task and moved to another task at its first suspension
(a shortcut for stores that never suspend) breaks everything bound to the task that was
current when it began: an ``asyncio.timeout`` (and ``asyncio.wait_for`` from 3.12, which
redis-py and our PostgreSQL layer use) entered before the first suspension cancels the
request's task when it fires, not the write; an anyio cancel scope (httpx) refuses to exit
in another task; a context-variable token set before the suspension cannot be reset after
it. Here a store's completion write does each of these before it first suspends.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from typing import Any

import pytest

from idempotent_middleware import (
    DataRecord,
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
)
from idempotent_middleware.exceptions import IdempotencyPersistenceLayerError
from tests.reliability._inprocess import Result, call_asgi

LEASE = 0.3
_TIMED_OUT = "IdempotencyPersistenceLayerError('store write timed out')"
_var: contextvars.ContextVar[int] = contextvars.ContextVar("review_perf_var", default=0)


class _GuardedWrites(InMemoryPersistenceLayer):
    """A store whose completion write enters a task-bound construct before it suspends."""

    def __init__(self, guard: str) -> None:
        super().__init__()
        self.guard = guard
        self.updates = 0
        self.failures: list[str] = []

    async def _update_record_async(self, data_record: DataRecord) -> None:
        try:
            await self._guarded(data_record)
        except BaseException as exc:
            self.failures.append(repr(exc))
            raise

    async def _guarded(self, data_record: DataRecord) -> None:
        self.updates += 1
        if self.guard == "asyncio_timeout":
            # The first write overruns its own deadline: its TimeoutError is the store's
            # failure, raised as the layer contract says (the lease writes the completion
            # later), never the request's.
            try:
                async with asyncio.timeout(0.05):  # type: ignore[attr-defined]
                    await asyncio.sleep(0.5 if self.updates == 1 else 0)
            except TimeoutError as exc:
                raise IdempotencyPersistenceLayerError("store write timed out") from exc
        elif self.guard == "anyio_scope":
            import anyio

            with anyio.fail_after(5):
                await asyncio.sleep(0.01)
        else:
            token = _var.set(1)
            await asyncio.sleep(0.01)
            _var.reset(token)
        self._update_record(data_record)


def _needs(guard: str) -> None:
    if guard == "asyncio_timeout" and sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout is new in 3.11")
    if guard == "anyio_scope":
        pytest.importorskip("anyio")


async def _call(app: Any, key: bytes) -> Result:
    headers = [(b"content-type", b"application/json"), (b"idempotency-key", key)]
    return await call_asgi(app, "POST", "/pay", headers, b"{}", None, b"")


@pytest.mark.parametrize("guard", ["asyncio_timeout", "anyio_scope", "contextvar_token"])
def test_a_task_bound_write_neither_cancels_the_request_nor_loses_the_record(guard: str) -> None:
    _needs(guard)
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send(
            {"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"4")]}
        )
        await send({"type": "http.response.body", "body": b"paid"})

    layer = _GuardedWrites(guard)
    middleware = IdempotencyMiddleware(app, layer, IdempotencyConfig(lease_seconds=LEASE))

    async def main() -> tuple[Result, Result]:
        first = await _call(middleware, guard.encode())
        deadline = time.monotonic() + 5
        while True:  # the client retries until it is answered with the stored response
            retry = await _call(middleware, guard.encode())
            if retry.status != 409 or time.monotonic() > deadline:
                return first, retry
            await asyncio.sleep(0.05)

    first, retry = asyncio.run(main())  # a CancelledError here: the request was cancelled
    assert (first.status, first.body, first.error) == (201, b"paid", None), first
    assert runs == [1]
    expected = (
        ["IdempotencyPersistenceLayerError('store write timed out')"]
        if guard == "asyncio_timeout"
        else []
    )
    assert layer.failures == expected, "the write failed for the task it ran in"
    assert (retry.status, retry.body, retry.replayed) == (201, b"paid", True), retry


@pytest.mark.parametrize("guard", ["asyncio_timeout", "anyio_scope", "contextvar_token"])
def test_an_async_function_settles_in_a_task_of_its_own(guard: str) -> None:
    """The same for ``idempotent_function`` on a coroutine function (its SETTLE step)."""
    _needs(guard)
    from idempotent_middleware import idempotent_function

    layer = _GuardedWrites(guard)
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="order",
        persistence_store=layer,
        config=IdempotencyConfig(lease_seconds=LEASE),
    )
    async def pay(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(1)
        return {"paid": order["id"]}

    async def main() -> tuple[Any, Any]:
        first = await pay(order={"id": guard})
        deadline = time.monotonic() + 5
        while True:
            try:
                return first, await pay(order={"id": guard})
            except Exception as exc:  # in progress until the lease writes the completion
                if time.monotonic() > deadline or "progress" not in type(exc).__name__.lower():
                    raise
                await asyncio.sleep(0.05)

    first, retry = asyncio.run(main())
    assert first == {"paid": guard} and retry == {"paid": guard}
    assert runs == [1]
    expected = (
        ["IdempotencyPersistenceLayerError('store write timed out')"]
        if guard == "asyncio_timeout"
        else []
    )
    assert layer.failures == expected, "the write failed for the task it ran in"
