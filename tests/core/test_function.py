"""idempotent_function: the decorator on every persistence layer."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyKeyError,
    IdempotencyValidationError,
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
