"""A replay gives back what was stored, to the caller it belongs to, or a typed error: no key
from a memory address, no altered value, no untyped crash on a bad record, no import."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import sys
import uuid
from typing import Any

import pytest

from idempotent_middleware import (
    DataclassSerializer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyCorruptRecordError,
    IdempotencyError,
    InMemoryPersistenceLayer,
    PydanticSerializer,
    idempotent_function,
)
from idempotent_middleware.function import _EXCEPTION_MARK
from idempotent_middleware.persistence.base import DataRecord, canonical_json


class Order:
    """A plain object: no JSON form, ``str()`` is its memory address."""

    def __init__(self, amount: int) -> None:
        self.amount = amount


def test_a_payload_without_a_json_form_is_a_typed_error() -> None:
    store = InMemoryPersistenceLayer()
    runs: list[int] = []

    @idempotent_function(data_keyword_argument="order", persistence_store=store)
    def charge(order: Order) -> int:
        runs.append(order.amount)
        return order.amount

    for amount in range(1, 4):
        with pytest.raises(TypeError) as info:
            charge(order=Order(amount))
        assert isinstance(info.value, IdempotencyError)
    assert runs == [] and len(store) == 0


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date


def test_value_types_with_a_stable_text_still_key() -> None:
    doc = {
        "amount": decimal.Decimal("1.10"),
        "at": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 1, 2),
        "time": datetime.time(3, 4),
        "id": uuid.UUID(int=7),
        "colour": Colour.RED,
        "point": Point(1, datetime.date(2024, 1, 2)),
        "raw": b"\x00\xff",
        "tags": {"b", "a"},
    }
    encoded = canonical_json(doc)
    assert encoded == canonical_json(dict(doc))
    assert b'"1.10"' in encoded and b"Colour.RED" in encoded and b'"x":1' in encoded


def _cached_value_error_store() -> tuple[InMemoryPersistenceLayer, Any, list[int]]:
    store = InMemoryPersistenceLayer()
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x", persistence_store=store, cache_exceptions=(ValueError,)
    )
    def f(x: int) -> int:
        runs.append(x)
        raise ValueError("bad")

    with pytest.raises(ValueError):
        f(x=1)
    return store, f, runs


def _overwrite(store: InMemoryPersistenceLayer, response_data: bytes) -> None:
    (key,) = list(store._records)
    record = store._records.get(key)
    store._records[key] = dataclasses.replace(record, response_data=response_data)


@pytest.mark.parametrize(
    "tail", [b"{not json", b"[1, 2]", b'"text"', b'{"module": 1, "qualname": []}', b"\xff"]
)
def test_a_corrupt_cached_exception_is_a_corrupt_record(tail: bytes) -> None:
    store, f, runs = _cached_value_error_store()
    _overwrite(store, _EXCEPTION_MARK + tail)
    with pytest.raises(IdempotencyCorruptRecordError):
        f(x=1)
    assert runs == [1]


@pytest.mark.parametrize("stored", [b"{not json", b"\xff\xfe", b""])
def test_a_corrupt_result_is_a_corrupt_record(stored: bytes) -> None:
    store = InMemoryPersistenceLayer()
    runs: list[int] = []

    @idempotent_function(data_keyword_argument="x", persistence_store=store)
    def f(x: int) -> int:
        runs.append(x)
        return x

    f(x=1)
    _overwrite(store, stored)
    with pytest.raises(IdempotencyCorruptRecordError):
        f(x=1)
    assert runs == [1]


def test_a_crafted_exception_record_triggers_no_import_and_no_module_getattr() -> None:
    import concurrent.futures  # noqa: F401  (asyncio imports it anyway)

    store, f, _ = _cached_value_error_store()
    doc = b'{"module":"concurrent.futures","qualname":"ProcessPoolExecutor","message":"m"}'
    _overwrite(store, _EXCEPTION_MARK + doc)
    sys.modules.pop("concurrent.futures.process", None)
    with pytest.raises(IdempotencyError):
        f(x=1)
    assert "concurrent.futures.process" not in sys.modules


class CardDeclinedError(ValueError):
    pass


def test_a_cached_subclass_of_cache_exceptions_is_rebuilt() -> None:
    store = InMemoryPersistenceLayer()

    @idempotent_function(
        data_keyword_argument="x", persistence_store=store, cache_exceptions=(ValueError,)
    )
    def f(x: int) -> int:
        raise CardDeclinedError("declined")

    for _ in range(2):
        with pytest.raises(CardDeclinedError, match="declined"):
            f(x=1)


def test_the_packages_own_errors_are_never_cached() -> None:
    store = InMemoryPersistenceLayer()
    busy = [True]
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="x", persistence_store=store, cache_exceptions=(Exception,)
    )
    def outer(x: int) -> str:
        runs.append(x)
        if busy[0]:  # a nested idempotent call found its key in flight elsewhere
            raise IdempotencyAlreadyInProgressError(retry_after=1.0)
        return "done"

    with pytest.raises(IdempotencyAlreadyInProgressError):
        outer(x=1)
    busy[0] = False
    assert outer(x=1) == "done"
    assert runs == [1, 1]


@dataclasses.dataclass
class Inner:
    x: int


@dataclasses.dataclass
class Outer:
    inner: Inner
    items: list[Inner]
    maybe: Inner | None = None


def test_nested_dataclasses_replay_equal() -> None:
    store = InMemoryPersistenceLayer()

    @idempotent_function(
        data_keyword_argument="n", persistence_store=store, output_serializer=DataclassSerializer
    )
    def make(n: int) -> Outer:
        return Outer(Inner(n), [Inner(n + 1)], Inner(n + 2))

    first = make(n=1)
    again = make(n=1)
    assert again == first
    assert type(again.inner) is Inner and type(again.items[0]) is Inner


@dataclasses.dataclass
class Opaque:
    inner: Any


def test_a_dataclass_that_would_not_round_trip_is_refused_and_released() -> None:
    store = InMemoryPersistenceLayer()
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="n", persistence_store=store, output_serializer=DataclassSerializer
    )
    def make(n: int) -> Opaque:
        runs.append(n)
        return Opaque(Inner(n))  # under ``Any``: it would come back as a dict

    with pytest.raises(TypeError):
        make(n=1)
    with pytest.raises(TypeError):
        make(n=1)
    assert runs == [1, 1] and len(store) == 0


def test_a_model_changed_between_store_and_replay_is_typed() -> None:
    import pydantic

    store = InMemoryPersistenceLayer()

    class Before(pydantic.BaseModel):
        a: int

    class After(pydantic.BaseModel):  # the deployed model gained a required field
        a: int
        b: int

    runs: list[int] = []

    def build(model: type[Any]) -> Any:
        @idempotent_function(
            data_keyword_argument="x",
            persistence_store=store,
            output_serializer=PydanticSerializer(model),
            key_prefix="receipts",
        )
        def f(x: int) -> Any:
            runs.append(x)
            return model(a=x, b=0)

        return f

    build(Before)(x=1)
    with pytest.raises(IdempotencyCorruptRecordError):
        build(After)(x=1)
    assert runs == [1]


def test_response_hook_cannot_alter_the_cached_record() -> None:
    store = InMemoryPersistenceLayer()

    def hook(value: Any, record: DataRecord) -> Any:
        record.response_data = b'"tampered"'  # a careless hook
        return value

    config = IdempotencyConfig(use_local_cache=True, response_hook=hook)

    @idempotent_function(data_keyword_argument="x", persistence_store=store, config=config)
    def f(x: int) -> str:
        return "original"

    assert [f(x=1), f(x=1), f(x=1)] == ["original"] * 3


@dataclasses.dataclass(eq=False)
class Reading:
    value: float
    inner: Inner


def test_the_round_trip_check_compares_values_not_identities() -> None:
    """``eq=False`` dataclasses and NaN fields still store (compared field by field)."""
    store = InMemoryPersistenceLayer()
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="n", persistence_store=store, output_serializer=DataclassSerializer
    )
    def read(n: int) -> Reading:
        runs.append(n)
        return Reading(float("nan"), Inner(n))

    read(n=1)
    again = read(n=1)
    assert runs == [1] and type(again.inner) is Inner and again.value != again.value
