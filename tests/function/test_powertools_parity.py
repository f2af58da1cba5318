"""Powertools behaviours a migrating user relies on (issue 13), on memory and real Redis."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import jmespath.functions
import pydantic
import pytest

import idempotent_middleware._disabled as _disabled
from idempotent_middleware import (
    BasePersistenceLayer,
    DataclassSerializer,
    DataRecord,
    IdempotencyCachedError,
    IdempotencyConfig,
    IdempotencyValidationError,
    PydanticSerializer,
    idempotent_function,
)


def _unique() -> str:
    return uuid.uuid4().hex  # keys must not collide across parametrised runs on one redis


# --- 1. validation only when configured ----------------------------------------------------------
def test_redelivered_event_with_changed_fields_replays(store: BasePersistenceLayer) -> None:
    calls = []
    config = IdempotencyConfig(event_key_jmespath="order_id")

    @idempotent_function(data_keyword_argument="event", persistence_store=store, config=config)
    def handle(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(event)
        return {"done": event["order_id"]}

    order = _unique()
    first = handle(event={"order_id": order, "sent_at": "2026-01-01T00:00:00Z"})
    second = handle(event={"order_id": order, "sent_at": "2026-01-01T00:05:00Z"})
    assert first == second == {"done": order}
    assert len(calls) == 1


@pytest.mark.parametrize("cached", [False, True])
def test_records_written_with_validation_keep_validating(
    store: BasePersistenceLayer, cached: bool
) -> None:
    config = IdempotencyConfig(
        event_key_jmespath="order_id", payload_validation_jmespath="amount", use_local_cache=cached
    )

    @idempotent_function(data_keyword_argument="event", persistence_store=store, config=config)
    def handle(event: dict[str, Any]) -> int:
        return int(event["amount"])

    order = _unique()
    assert handle(event={"order_id": order, "amount": 5, "sent_at": 1}) == 5
    assert handle(event={"order_id": order, "amount": 5, "sent_at": 2}) == 5
    with pytest.raises(IdempotencyValidationError):
        handle(event={"order_id": order, "amount": 6, "sent_at": 3})


def test_a_record_fingerprinted_by_an_older_version_replays(store: BasePersistenceLayer) -> None:
    """Records from before the change carry a whole-payload hash: a caller that does not
    validate replays them instead of answering 422 during a rolling upgrade."""
    config = IdempotencyConfig(event_key_jmespath="order_id")
    scheme = store.configure(config, "legacy")
    event = {"order_id": _unique(), "sent_at": 1}
    claim = store.new_inprogress_record(
        str(scheme.hashed_key(scheme.key_material(event))), scheme.generate_hash(event), 30, 60
    )
    store._put_record(claim)
    store._update_record(store.completed_record(claim, b'"old"', 60))
    assert store.get_record({**event, "sent_at": 2}, scheme=scheme).response_data == b'"old"'


# --- 2. Powertools' JMESPath functions -----------------------------------------------------------
def test_powertools_json_in_the_key_expression(store: BasePersistenceLayer) -> None:
    calls = []
    config = IdempotencyConfig(event_key_jmespath="powertools_json(body).order_id")

    @idempotent_function(data_keyword_argument="event", persistence_store=store, config=config)
    def handle(event: dict[str, Any]) -> str:
        calls.append(event)
        return "ok"

    order = _unique()
    handle(event={"body": json.dumps({"order_id": order, "n": 1})})
    handle(event={"body": json.dumps({"n": 2, "order_id": order})})
    assert len(calls) == 1


def test_powertools_base64_functions() -> None:
    from idempotent_middleware.persistence.base import KeyScheme

    text = json.dumps({"id": "x"})
    data = {
        "b64": base64.b64encode(text.encode()).decode(),
        "gz": base64.b64encode(gzip.compress(text.encode())).decode(),
    }
    plain = KeyScheme.build(
        IdempotencyConfig(event_key_jmespath="powertools_json(powertools_base64(b64)).id"), "s"
    )
    zipped = KeyScheme.build(
        IdempotencyConfig(event_key_jmespath="powertools_json(powertools_base64_gzip(gz)).id"), "s"
    )
    assert plain.key_material(data) == zipped.key_material(data) == "x"


class _UserFunctions(jmespath.functions.Functions):
    @jmespath.functions.signature({"types": ["string"]})
    def _func_upper(self, value: str) -> str:
        return value.upper()

    @jmespath.functions.signature({"types": ["string"]})
    def _func_powertools_json(self, value: str) -> Any:
        return {"mine": value}


def test_user_functions_are_kept_and_win_on_a_clash() -> None:
    from idempotent_middleware.persistence.base import KeyScheme

    options = {"custom_functions": _UserFunctions()}

    def material(expr: str) -> Any:
        config = IdempotencyConfig(event_key_jmespath=expr, jmespath_options=options)
        return KeyScheme.build(config, "s").key_material({"v": "ab", "g": "eA=="})

    assert material("upper(v)") == "AB"
    assert material("powertools_json(v)") == {"mine": "ab"}
    assert material("powertools_base64(g)") == "x"


# --- 3. serializers ------------------------------------------------------------------------------
@dataclass
class Receipt:
    order: str
    total: int


class PydanticReceipt(pydantic.BaseModel):
    order: str
    total: int


def test_deduced_dataclass_serializer(store: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(
        data_keyword_argument="order",
        persistence_store=store,
        output_serializer=DataclassSerializer,
    )
    def charge(order: str) -> Receipt:
        calls.append(order)
        return Receipt(order, 3)

    order = _unique()
    assert charge(order=order) == charge(order=order) == Receipt(order, 3)
    assert type(charge(order=order)) is Receipt
    assert len(calls) == 1


def test_deduced_pydantic_serializer_and_none_results(store: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(
        data_keyword_argument="order", persistence_store=store, output_serializer=PydanticSerializer
    )
    def charge(order: str) -> PydanticReceipt | None:
        calls.append(order)
        return None if order.startswith("none") else PydanticReceipt(order=order, total=1)

    order = _unique()
    assert charge(order=order) == charge(order=order) == PydanticReceipt(order=order, total=1)
    assert charge(order="none" + order) is None
    assert charge(order="none" + order) is None
    assert len(calls) == 2


def test_deduced_serializer_without_annotation_is_a_typed_error(
    store: BasePersistenceLayer,
) -> None:
    with pytest.raises(TypeError, match="return annotation"):

        @idempotent_function(
            data_keyword_argument="order",
            persistence_store=store,
            output_serializer=PydanticSerializer,
        )
        def charge(order: str):  # type: ignore[no-untyped-def]
            return None


def test_deduced_serializer_refuses_a_foreign_model(store: BasePersistenceLayer) -> None:
    with pytest.raises(TypeError, match="pydantic model"):

        @idempotent_function(
            data_keyword_argument="order",
            persistence_store=store,
            output_serializer=PydanticSerializer,
        )
        def charge(order: str) -> Receipt:
            return Receipt(order, 1)


# --- 4. key_prefix -------------------------------------------------------------------------------
def test_key_prefix_survives_renaming(store: BasePersistenceLayer) -> None:
    prefix = "orders-" + _unique()
    calls = []

    @idempotent_function(data_keyword_argument="order", persistence_store=store, key_prefix=prefix)
    def old_name(order: str) -> str:
        calls.append("old")
        return "first"

    @idempotent_function(data_keyword_argument="order", persistence_store=store, key_prefix=prefix)
    def new_name(order: str) -> str:
        calls.append("new")
        return "second"

    assert old_name(order="o1") == "first"
    assert new_name(order="o1") == "first"
    assert calls == ["old"]


# --- 5. response_hook ----------------------------------------------------------------------------
def test_response_hook_runs_on_every_replay(store: BasePersistenceLayer) -> None:
    seen: list[tuple[Any, DataRecord]] = []

    def hook(response: Any, record: DataRecord) -> Any:
        seen.append((response, record))
        return {**response, "replayed": True}

    config = IdempotencyConfig(response_hook=hook)

    @idempotent_function(data_keyword_argument="order", persistence_store=store, config=config)
    def charge(order: str) -> dict[str, Any]:
        return {"order": order}

    order = _unique()
    assert charge(order=order) == {"order": order}
    assert charge(order=order) == {"order": order, "replayed": True}
    assert charge(order=order) == {"order": order, "replayed": True}
    assert len(seen) == 2
    assert all(record.status == "COMPLETED" for _, record in seen)


# --- 6. the disable switch -----------------------------------------------------------------------
@pytest.mark.parametrize("variable", ["IDEMPOTENCY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED"])
def test_disabled_by_the_environment_at_call_time(
    store: BasePersistenceLayer,
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_disabled, "_warned", False)
    calls = []

    @idempotent_function(data_keyword_argument="order", persistence_store=store)
    def charge(order: str) -> int:
        calls.append(order)
        return len(calls)

    async_calls = []

    @idempotent_function(data_keyword_argument="order", persistence_store=store)
    async def charge_async(order: str) -> int:
        async_calls.append(order)
        return len(async_calls)

    order = _unique()
    monkeypatch.setenv(variable, "true")  # after decoration: read at call time
    with caplog.at_level(logging.WARNING, logger="idempotent_middleware"):
        assert [charge(order=order), charge(order=order)] == [1, 2]
        assert asyncio.run(charge_async(order=order)) == 1
    assert sum("DISABLED" in r.getMessage() for r in caplog.records) == 1  # once per process
    monkeypatch.setenv(variable, "no")
    assert charge(order=order) == charge(order=order) == 3


# --- 7. cached exceptions ------------------------------------------------------------------------
class CardDeclined(Exception):
    pass


class NeedsTwoArgs(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")


def test_cached_exception_is_raised_again_without_running(store: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(
        data_keyword_argument="order",
        persistence_store=store,
        cache_exceptions=(CardDeclined, KeyError),
    )
    def charge(order: str) -> str:
        calls.append(order)
        if order.startswith("key"):
            raise KeyError("card")
        raise CardDeclined(f"declined {order}")

    order = _unique()
    for _ in range(3):
        with pytest.raises(CardDeclined, match=f"declined {order}"):
            charge(order=order)
    with pytest.raises(KeyError) as info:
        charge(order="key" + order)
    with pytest.raises(KeyError) as again:
        charge(order="key" + order)
    assert str(again.value) == str(info.value) == "'card'"
    assert len(calls) == 2


def test_cached_exception_that_cannot_be_rebuilt_is_typed(store: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(
        data_keyword_argument="order", persistence_store=store, cache_exceptions=(NeedsTwoArgs,)
    )
    def charge(order: str) -> str:
        calls.append(order)
        raise NeedsTwoArgs(402, "declined")

    order = _unique()
    with pytest.raises(NeedsTwoArgs):
        charge(order=order)
    with pytest.raises(IdempotencyCachedError) as info:
        charge(order=order)
    assert info.value.type_name == f"{__name__}.NeedsTwoArgs"
    assert info.value.message == "402: declined"
    assert len(calls) == 1


def test_other_exceptions_still_release(store: BasePersistenceLayer) -> None:
    calls = []

    @idempotent_function(
        data_keyword_argument="order", persistence_store=store, cache_exceptions=(CardDeclined,)
    )
    def charge(order: str) -> str:
        calls.append(order)
        if len(calls) == 1:
            raise ValueError("transient")
        return "ok"

    order = _unique()
    with pytest.raises(ValueError):
        charge(order=order)
    assert charge(order=order) == "ok"
    assert len(calls) == 2


class _CodeSerializer:
    def to_dict(self, exc: BaseException) -> Any:
        return {"code": exc.args[0]}

    def from_dict(self, data: Any) -> BaseException:
        return CardDeclined(f"code {data['code']}")


def test_cached_exception_with_a_user_serializer(store: BasePersistenceLayer) -> None:
    @idempotent_function(
        data_keyword_argument="order",
        persistence_store=store,
        cache_exceptions=(CardDeclined,),
        exception_serializer=_CodeSerializer(),
    )
    async def charge(order: str) -> str:
        raise CardDeclined(51)

    order = _unique()
    with pytest.raises(CardDeclined, match="51"):
        asyncio.run(charge(order=order))
    with pytest.raises(CardDeclined, match="code 51"):
        asyncio.run(charge(order=order))


def test_cache_exceptions_refuses_interruptions(store: BasePersistenceLayer) -> None:
    with pytest.raises(TypeError, match="Exception subclasses"):
        idempotent_function(
            data_keyword_argument="order",
            persistence_store=store,
            cache_exceptions=(KeyboardInterrupt,),  # type: ignore[arg-type]
        )(lambda order: order)


def test_either_disable_variable_disables(
    store: BasePersistenceLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A falsy value in one variable does not hide a truthy one in the other."""
    calls = []

    @idempotent_function(data_keyword_argument="order", persistence_store=store)
    def charge(order: str) -> int:
        calls.append(order)
        return len(calls)

    order = _unique()
    for first, second in (("0", "1"), ("1", "0"), ("", "true"), ("no", "yes")):
        monkeypatch.setenv("IDEMPOTENCY_DISABLED", first)
        monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", second)
        before = len(calls)
        charge(order=order)
        charge(order=order)
        assert len(calls) == before + 2
