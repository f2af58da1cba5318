"""``idempotent``: Lambda-style ``handler(event, context)``, the lease following the
invocation's remaining time (the seed's ``remaining_time_in_millis``)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyNoTimeLeftError,
    idempotent,
    idempotent_function,
)


class Context:
    """Any object with ``get_remaining_time_in_millis`` will do, outside Lambda too."""

    def __init__(self, millis: int) -> None:
        self.deadline = time.time() * 1000 + millis

    def get_remaining_time_in_millis(self) -> int:
        return int(self.deadline - time.time() * 1000)


def _event() -> dict[str, Any]:
    return {"order_id": uuid.uuid4().hex, "sent_at": time.time()}


def test_sync_handler_runs_once(store: BasePersistenceLayer) -> None:
    calls = []
    config = IdempotencyConfig(event_key_jmespath="order_id")

    @idempotent(persistence_store=store, config=config)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event)
        return {"statusCode": 200, "order": event["order_id"]}

    event = _event()
    first = handler(event, Context(60_000))
    assert handler({**event, "sent_at": 0}, Context(60_000)) == first
    assert len(calls) == 1


def test_async_handler_runs_once(store: BasePersistenceLayer) -> None:
    calls = []
    config = IdempotencyConfig(event_key_jmespath="order_id")

    @idempotent(persistence_store=store, config=config)
    async def handler(event: dict[str, Any], context: Any) -> str:
        calls.append(event)
        return "ok"

    event = _event()

    async def main() -> list[str]:
        return [await handler(event, Context(60_000)) for _ in range(2)]

    assert asyncio.run(main()) == ["ok", "ok"]
    assert len(calls) == 1


def test_the_lease_is_the_invocations_remaining_time(store: BasePersistenceLayer) -> None:
    """lease_seconds is 30 s, the invocation has 300 ms: a retry after the invocation's
    deadline is free to run, as with the seed; during it, the key is held."""
    config = IdempotencyConfig(event_key_jmespath="order_id", lease_seconds=30)
    started, finish = threading.Event(), threading.Event()
    calls = []

    @idempotent(persistence_store=store, config=config)
    def handler(event: dict[str, Any], context: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            started.set()
            finish.wait(10)
        return "ok"

    event = _event()
    first = threading.Thread(target=handler, args=(event, Context(300)))
    first.start()
    try:
        assert started.wait(10)
        with pytest.raises(IdempotencyAlreadyInProgressError):
            handler(event, Context(60_000))
        record = store._get_record(next(iter(_keys(store, event, handler))))
        lease_left = (record.in_progress_expiry_timestamp or 0) - time.time() * 1000
        assert lease_left <= 300
    finally:
        finish.set()
        first.join(10)


def _keys(store: BasePersistenceLayer, event: dict[str, Any], handler: Any) -> list[str]:
    from idempotent_middleware.persistence.base import KeyScheme

    scheme = KeyScheme.build(
        IdempotencyConfig(event_key_jmespath="order_id"),
        f"{handler.__module__}.{handler.__qualname__}",
    )
    return [str(scheme.hashed_key(scheme.key_material(event)))]


def test_no_time_left_is_refused_before_claiming(store: BasePersistenceLayer) -> None:
    calls = []

    @idempotent(persistence_store=store, config=IdempotencyConfig(event_key_jmespath="order_id"))
    def handler(event: dict[str, Any], context: Any) -> str:
        calls.append(1)
        return "ok"

    event = _event()
    with pytest.raises(IdempotencyNoTimeLeftError):
        handler(event, Context(-5))
    assert handler(event, Context(60_000)) == "ok"  # nothing was claimed
    assert calls == [1]


def test_registered_context_reaches_idempotent_function(store: BasePersistenceLayer) -> None:
    """Powertools' pattern: the handler registers its context, inner functions use it."""
    config = IdempotencyConfig(event_key_jmespath="order_id")

    @idempotent_function(data_keyword_argument="record", persistence_store=store, config=config)
    def process(record: dict[str, Any]) -> str:
        return "done"

    def handler(event: dict[str, Any], context: Any) -> str:
        config.register_lambda_context(context)
        return process(record=event)

    result: list[Any] = []

    def invocation() -> None:  # a thread: its own context, as one Lambda invocation
        try:
            result.append(handler(_event(), Context(0)))
        except Exception as exc:
            result.append(exc)

    worker = threading.Thread(target=invocation)
    worker.start()
    worker.join(10)
    assert isinstance(result[0], IdempotencyNoTimeLeftError)
    assert config.lambda_context is None  # registered in that thread only
    assert process(record=_event()) == "done"


def test_async_handler_with_keyword_arguments_and_no_time_left(
    store: BasePersistenceLayer,
) -> None:
    calls = []

    @idempotent(persistence_store=store, config=IdempotencyConfig(event_key_jmespath="order_id"))
    async def handler(event: dict[str, Any], context: Any) -> str:
        calls.append(1)
        return "ok"

    event = _event()

    async def main() -> str:
        with pytest.raises(IdempotencyNoTimeLeftError):
            await handler(event=event, context=Context(0))
        await handler(event=event, context=Context(60_000))
        return await handler(event=event, context=Context(60_000))

    assert asyncio.run(main()) == "ok"
    assert calls == [1]


def test_concurrent_invocations_sharing_a_config_keep_their_own_context(
    store: BasePersistenceLayer,
) -> None:
    config = IdempotencyConfig(event_key_jmespath="order_id")

    @idempotent_function(data_keyword_argument="record", persistence_store=store, config=config)
    async def process(record: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return "done"

    async def invocation(context: Context) -> Any:
        config.register_lambda_context(context)
        await asyncio.sleep(0)  # let the other task register its own meanwhile
        try:
            return await process(record=_event())
        except IdempotencyNoTimeLeftError as exc:
            return exc

    async def main() -> list[Any]:
        return list(await asyncio.gather(invocation(Context(0)), invocation(Context(60_000))))

    expired, alive = asyncio.run(main())
    assert isinstance(expired, IdempotencyNoTimeLeftError)
    assert alive == "done"
