"""R1: a completion the store refused once is left to the event loop's lease; when that loop
ends (``asyncio.run`` per job, a server's shutdown) the write is dropped and the key frees
after one lease, so the next call with the key runs the function a second time.

The sync twin (``tests/function/test_completion_write.py``) passes: its renewer thread
outlives the call and writes the completion.
"""

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
