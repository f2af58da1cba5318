"""The completion of a run that started is written before its lease stops: an interruption or
a store failure during that write leaves the key held (the lease writes it later), never free
for a second run."""

from __future__ import annotations

import asyncio
import time

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyPersistenceLayerError,
    InMemoryPersistenceLayer,
    idempotent_function,
)
from idempotent_middleware.persistence.base import DataRecord


class SlowUpdateLayer(InMemoryPersistenceLayer):
    """An async store whose completion write takes a moment (any network store does)."""

    def __init__(self) -> None:
        super().__init__()
        self.update_started = asyncio.Event()

    async def _update_record_async(self, data_record: DataRecord) -> None:
        self.update_started.set()
        await asyncio.sleep(0.2)
        self._update_record(data_record)


def test_cancel_during_the_async_completion_write_never_runs_twice() -> None:
    store = SlowUpdateLayer()
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=0.1),
    )
    async def f(x: int) -> int:
        runs.append(x)
        return x

    async def main() -> int:
        task = asyncio.create_task(f(x=1))
        await store.update_started.wait()
        task.cancel()  # the caller's timeout, a server shutdown
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)  # several leases later
        return await f(x=1)

    assert asyncio.run(main()) == 1
    assert runs == [1]


class InterruptingLayer(InMemoryPersistenceLayer):
    """Raises ``failure`` from the first completion write, then behaves."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__()
        self.failure: BaseException | None = failure

    def _update_record(self, data_record: DataRecord) -> None:
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure
        super()._update_record(data_record)


def test_interrupt_during_the_sync_completion_write_never_runs_twice() -> None:
    store = InterruptingLayer(KeyboardInterrupt())
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=0.1),
    )
    def f(x: int) -> int:
        runs.append(x)
        return x

    with pytest.raises(KeyboardInterrupt):
        f(x=1)
    time.sleep(0.4)  # several leases later
    assert f(x=1) == 1
    assert runs == [1]


def test_store_error_during_the_completion_write_keeps_the_key() -> None:
    store = InterruptingLayer(IdempotencyPersistenceLayerError("blip"))
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=0.1),
    )
    def f(x: int) -> int:
        runs.append(x)
        return x

    assert f(x=1) == 1  # the caller gets its result; the lease writes it later
    time.sleep(0.4)  # several leases later
    assert f(x=1) == 1
    assert runs == [1]


def test_interrupt_during_the_outcome_unknown_write_keeps_the_key() -> None:
    from idempotent_middleware import IdempotencyOutcomeUnknownError

    store = InterruptingLayer(KeyboardInterrupt())
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=0.1),
    )
    def f(x: int) -> int:
        runs.append(x)
        raise SystemExit(1)

    with pytest.raises(KeyboardInterrupt):
        f(x=1)
    time.sleep(0.4)
    with pytest.raises(IdempotencyOutcomeUnknownError):
        f(x=1)
    assert runs == [1]
