"""idempotent_function: the decorator on every persistence layer."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyKeyError,
    IdempotencyOutcomeUnknownError,
    IdempotencyStoreFullError,
    IdempotencyValidationError,
    InMemoryPersistenceLayer,
    idempotent_function,
)


@pytest.mark.parametrize("result", [0, False, "", [], {}, None, 0.0])
def test_falsy_results_replay_exactly(layer: BasePersistenceLayer, result: Any) -> None:
    calls = []

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def handler(event: dict[str, Any]) -> Any:
        calls.append(event)
        return result

    first = handler(event={"id": 1})
    second = handler(event={"id": 1})
    assert first == second == result
    assert type(second) is type(result)
    assert len(calls) == 1


def test_async_function_runs_once(layer: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    async def handler(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(event)
        return {"ok": event["id"]}

    async def main() -> list[Any]:
        return [await handler(event={"id": 5}) for _ in range(3)]

    assert asyncio.run(main()) == [{"ok": 5}] * 3
    assert len(calls) == 1


def test_exception_releases_the_key(layer: BasePersistenceLayer) -> None:
    attempts = []

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def flaky(event: dict[str, Any]) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("transient")
        return "done"

    with pytest.raises(RuntimeError):
        flaky(event={"id": 1})
    assert flaky(event={"id": 1}) == "done"
    assert flaky(event={"id": 1}) == "done"
    assert len(attempts) == 2


def test_in_flight_duplicate_raises_in_progress(layer: BasePersistenceLayer) -> None:
    started = threading.Event()

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def slow(event: dict[str, Any]) -> int:
        started.set()
        time.sleep(0.3)
        return 1

    worker = threading.Thread(target=slow, kwargs={"event": {"id": 1}})
    worker.start()
    assert started.wait(5)
    with pytest.raises(IdempotencyAlreadyInProgressError) as info:
        slow(event={"id": 1})
    assert info.value.retry_after > 0
    worker.join()
    assert slow(event={"id": 1}) == 1


def test_payload_validation_replays_honest_retry_and_rejects_change(
    layer: BasePersistenceLayer,
) -> None:
    config = IdempotencyConfig(event_key_jmespath="id", payload_validation_jmespath="amount")

    @idempotent_function(data_keyword_argument="event", persistence_store=layer, config=config)
    def pay(event: dict[str, Any]) -> int:
        return int(event["amount"])

    assert pay(event={"id": "a", "amount": 5, "note": "x"}) == 5
    assert pay(event={"id": "a", "amount": 5, "note": "y"}) == 5  # note is not validated
    with pytest.raises(IdempotencyValidationError):
        pay(event={"id": "a", "amount": 6})


def test_missing_key_runs_unprotected_or_raises(layer: BasePersistenceLayer) -> None:
    calls = []
    loose = IdempotencyConfig(event_key_jmespath="id")

    @idempotent_function(data_keyword_argument="event", persistence_store=layer, config=loose)
    def handler(event: dict[str, Any]) -> int:
        calls.append(1)
        return 1

    handler(event={"other": 1})
    handler(event={"other": 1})
    assert len(calls) == 2  # no key: never silently de-duplicated

    strict = IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=True)

    @idempotent_function(data_keyword_argument="event", persistence_store=layer, config=strict)
    def strict_handler(event: dict[str, Any]) -> int:
        return 1

    with pytest.raises(IdempotencyKeyError):
        strict_handler(event={"other": 1})


def test_two_functions_on_one_layer_never_share_keys(layer: BasePersistenceLayer) -> None:
    """The seed's bug: a shared "current function" on the layer mixed results up."""

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def alpha(event: dict[str, Any]) -> str:
        time.sleep(0.001)
        return f"alpha:{event['i']}"

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def beta(event: dict[str, Any]) -> str:
        time.sleep(0.001)
        return f"beta:{event['i']}"

    errors: list[str] = []

    def run(fn: Any, name: str, base: int) -> None:
        for i in range(base, base + 20):
            for _ in range(2):
                got = fn(event={"i": i})
                if got != f"{name}:{i}":
                    errors.append(f"{name} got {got}")

    threads = [
        threading.Thread(target=run, args=(fn, name, base))
        for fn, name in ((alpha, "alpha"), (beta, "beta"))
        for base in (0, 100, 200)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def tasks() -> None:
        async def one(name: str, fn: Any) -> None:
            for i in range(300, 310):
                got = await asyncio.to_thread(fn, event={"i": i})
                if got != f"{name}:{i}":
                    errors.append(f"{name} got {got}")

        await asyncio.gather(one("alpha", alpha), one("beta", beta))

    asyncio.run(tasks())
    assert errors == []


def test_dataclass_and_pydantic_results(layer: BasePersistenceLayer) -> None:
    import pydantic

    @dataclass
    class Receipt:
        id: str
        cents: int

    class Model(pydantic.BaseModel):
        id: str
        tags: list[str]

    @idempotent_function(
        data_keyword_argument="event", persistence_store=layer, output_serializer=Receipt
    )
    def receipt(event: dict[str, Any]) -> Receipt:
        return Receipt(event["id"], 100)

    @idempotent_function(
        data_keyword_argument="event", persistence_store=layer, output_serializer=Model
    )
    def model(event: Model) -> Model:
        return Model(id=event.id, tags=["a"])

    assert receipt(event={"id": "r"}) == receipt(event={"id": "r"}) == Receipt("r", 100)
    replayed = model(event=Model(id="m", tags=[]))
    assert model(event=Model(id="m", tags=[])) == replayed == Model(id="m", tags=["a"])


def test_lease_is_renewed_while_a_long_handler_runs(layer: BasePersistenceLayer) -> None:
    config = IdempotencyConfig(lease_seconds=0.3)
    started = threading.Event()

    @idempotent_function(data_keyword_argument="event", persistence_store=layer, config=config)
    def long(event: dict[str, Any]) -> int:
        started.set()
        time.sleep(1.0)  # three leases long: only renewal keeps the key ours
        return 1

    worker = threading.Thread(target=long, kwargs={"event": {"id": 1}})
    worker.start()
    assert started.wait(5)
    time.sleep(0.7)
    with pytest.raises(IdempotencyAlreadyInProgressError):
        long(event={"id": 1})
    worker.join()


def test_item9_none_result_with_a_serializer_round_trips_as_none(
    layer: BasePersistenceLayer,
) -> None:
    @dataclass
    class Receipt:
        id: str

    calls = []

    @idempotent_function(
        data_keyword_argument="event", persistence_store=layer, output_serializer=Receipt
    )
    def maybe(event: dict[str, Any]) -> Receipt | None:
        calls.append(1)
        return None

    assert maybe(event={"id": 1}) is None
    assert maybe(event={"id": 1}) is None
    assert len(calls) == 1


def test_item9_a_failing_serializer_releases_the_key() -> None:
    layer = InMemoryPersistenceLayer()

    class Broken:
        def to_dict(self, value: Any) -> Any:
            raise ValueError("cannot")

        def from_dict(self, data: Any) -> Any:
            return data

    @idempotent_function(
        data_keyword_argument="event", persistence_store=layer, output_serializer=Broken()
    )
    def handler(event: dict[str, Any]) -> int:
        return 1

    with pytest.raises(ValueError, match="cannot"):
        handler(event={"id": 1})
    assert len(layer) == 0  # released, not left in progress


@pytest.mark.parametrize(
    "result",
    [Decimal("10.50"), (1, 2), {1: "a"}, {"at": datetime(2026, 1, 1)}, [b"raw"], {"s": {1}}],
)
def test_item17_non_json_result_raises_type_error_and_releases(result: Any) -> None:
    layer = InMemoryPersistenceLayer()
    calls = []

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def handler(event: dict[str, Any]) -> Any:
        calls.append(1)
        return result

    with pytest.raises(TypeError):
        handler(event={"id": 1})
    assert len(layer) == 0
    with pytest.raises(TypeError):
        handler(event={"id": 1})
    assert len(calls) == 2  # released: the error is the caller's, every time


def test_item17_payload_hashing_stays_lenient() -> None:
    layer = InMemoryPersistenceLayer()

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def handler(event: dict[str, Any]) -> str:
        return str(event["amount"])

    assert handler(event={"amount": Decimal("1.5")}) == "1.5"
    assert handler(event={"amount": Decimal("1.5")}) == "1.5"


def test_item18_cache_is_the_callers_choice() -> None:
    layer = InMemoryPersistenceLayer()
    cached_cfg = IdempotencyConfig(event_key_jmespath="id", use_local_cache=True)
    calls = []

    def make(config: IdempotencyConfig) -> Any:
        # One qualname, so both decorated functions share one key scope.
        @idempotent_function(data_keyword_argument="event", persistence_store=layer, config=config)
        def handler(event: dict[str, Any]) -> int:
            calls.append(config.use_local_cache)
            return len(calls)

        return handler

    cached, plain = make(cached_cfg), make(IdempotencyConfig(event_key_jmespath="id"))
    assert cached(event={"id": "a"}) == 1
    assert cached(event={"id": "a"}) == 1
    (key_a,) = layer._records
    layer._records.pop(key_a)  # the store forgets the record
    assert plain(event={"id": "a"}) == 2  # no cache for this caller: it asks the store
    assert plain(event={"id": "b"}) == 3
    (key_b,) = set(layer._records) - {key_a}
    layer._records.pop(key_b)
    assert layer._retrieve_from_cache(key_b) is None  # the plain caller wrote no cache


def test_item18_local_cache_is_bounded_in_bytes() -> None:
    layer = InMemoryPersistenceLayer()
    config = IdempotencyConfig(use_local_cache=True, local_cache_max_bytes=4096)

    @idempotent_function(data_keyword_argument="event", persistence_store=layer, config=config)
    def big(event: dict[str, Any]) -> str:
        return "x" * 1000

    for i in range(20):
        big(event={"id": i})
        big(event={"id": i})  # a replay: cached
    assert layer._cache is not None
    assert layer._cache.bytes <= 4096
    assert 1 <= len(layer._cache) <= 4


def test_item6_full_memory_store_refuses_new_calls_typed() -> None:
    layer = InMemoryPersistenceLayer(max_items=3)

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def handler(event: dict[str, Any]) -> int:
        return int(event["id"])

    for i in range(3):
        assert handler(event={"id": i}) == i
    with pytest.raises(IdempotencyStoreFullError):
        handler(event={"id": 3})
    assert [handler(event={"id": i}) for i in range(3)] == [0, 1, 2]  # replays still served


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_c3_interrupted_sync_function_is_never_run_again(
    layer: BasePersistenceLayer, interrupt: type[BaseException]
) -> None:
    calls = []

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    def charge(event: dict[str, Any]) -> str:
        calls.append(1)
        raise interrupt()

    with pytest.raises(interrupt):
        charge(event={"id": 1})
    for _ in range(2):
        try:
            charge(event={"id": 1})
        except IdempotencyOutcomeUnknownError:
            continue
        except interrupt as exc:  # never let a second KeyboardInterrupt stop the session
            raise AssertionError(f"ran again: {len(calls)} calls") from exc
        raise AssertionError("a retry returned")
    assert len(calls) == 1


def test_c3_cancelled_async_function_is_never_run_again(layer: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    async def charge(event: dict[str, Any]) -> str:
        calls.append(1)
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return "never"

    async def main() -> None:
        task = asyncio.create_task(charge(event={"id": 1}))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(IdempotencyOutcomeUnknownError):
            await asyncio.wait_for(charge(event={"id": 1}), 10)  # a second run would hang

    started = asyncio.Event()
    asyncio.run(main())
    assert len(calls) == 1


def test_c3_application_exception_still_releases_async(layer: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(data_keyword_argument="event", persistence_store=layer)
    async def flaky(event: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return "ok"

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await flaky(event={"id": 1})
        assert await flaky(event={"id": 1}) == "ok"
        assert await flaky(event={"id": 1}) == "ok"

    asyncio.run(main())
    assert len(calls) == 2
