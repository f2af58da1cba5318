"""The decision core (``_core.py``) against custom and bounded layers, without HTTP servers."""

from __future__ import annotations

from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
    InMemoryPersistenceLayer,
)
from idempotent_middleware._core import Claimed, Replay, plan_claim
from idempotent_middleware._steps import drive
from idempotent_middleware.http.engine import Execute, HttpIdempotency, Respond
from idempotent_middleware.http.request import HttpRequest
from idempotent_middleware.persistence.base import DataRecord


class PowertoolsStyleLayer(InMemoryPersistenceLayer):
    """A custom layer that raises ``IdempotencyItemAlreadyExistsError()`` without the record,
    as the Powertools layers do; ``vanish`` makes the record disappear before each GET."""

    def __init__(self, vanish: bool = False) -> None:
        super().__init__()
        self.vanish = vanish
        self.puts = 0
        self.gets = 0

    def _put_record(self, data_record: DataRecord) -> None:
        self.puts += 1
        if self.puts > 1000:  # the unfixed core spins forever: stop it here, loudly
            raise AssertionError("plan_claim looped without bound")
        try:
            super()._put_record(data_record)
        except IdempotencyItemAlreadyExistsError:
            raise IdempotencyItemAlreadyExistsError() from None

    def _get_record(self, idempotency_key: str) -> DataRecord:
        self.gets += 1
        if self.vanish:
            raise IdempotencyItemNotFoundError(idempotency_key)
        return super()._get_record(idempotency_key)


def claim(layer: InMemoryPersistenceLayer, key: str = "fn#k") -> Replay | Claimed:
    plan = plan_claim(layer, key, "fp", lease_seconds=30, expires_after_seconds=60)
    return drive(layer, plan)


def test_item10_record_less_conflict_is_read_with_a_get() -> None:
    layer = PowertoolsStyleLayer()
    first = claim(layer)
    assert isinstance(first, Claimed)
    layer._update_record(layer.completed_record(first.record, b"42", 60))
    again = claim(layer)
    assert isinstance(again, Replay)
    assert again.record.response_data == b"42"
    assert layer.gets == 1


def test_item10_record_that_keeps_vanishing_fails_typed_and_bounded() -> None:
    layer = PowertoolsStyleLayer(vanish=True)
    assert isinstance(claim(layer), Claimed)
    with pytest.raises(IdempotencyPersistenceLayerError):
        claim(layer)
    assert layer.puts <= 5


def _request(key: bytes) -> HttpRequest:
    return HttpRequest("POST", "/pay", b"", [(b"idempotency-key", key)], None, b"{}")


def _begin(engine: HttpIdempotency, key: bytes) -> Any:
    request = _request(key)
    rule = engine.rule("POST", "/pay")
    assert rule is not None
    assert engine.precheck(request, rule) is None
    return drive(engine.store, engine.begin(request, rule))


def test_item10_http_answers_503_when_the_claim_never_settles() -> None:
    engine = HttpIdempotency(IdempotencyConfig(), PowertoolsStyleLayer(vanish=True))
    assert isinstance(_begin(engine, b"a"), Execute)
    answer = _begin(engine, b"a")
    assert isinstance(answer, Respond)
    assert answer.response.status == 503


def test_item6_http_answers_503_when_the_memory_store_is_full() -> None:
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer(max_items=2))
    for key in (b"a", b"b"):
        assert isinstance(_begin(engine, key), Execute)
    answer = _begin(engine, b"c")
    assert isinstance(answer, Respond)
    assert answer.response.status == 503
    assert isinstance(_begin(engine, b"a"), Respond)  # the live claim is still there: 409
    assert _begin(engine, b"a").response.status == 409


def test_item18_http_engine_without_cache_never_reads_another_callers_cache() -> None:
    store = InMemoryPersistenceLayer()
    cached = HttpIdempotency(IdempotencyConfig(use_local_cache=True), store)
    plain = HttpIdempotency(IdempotencyConfig(), store)
    action = _begin(cached, b"k")
    assert isinstance(action, Execute)
    from idempotent_middleware.http.response import StoredResponse

    drive(store, cached.finish(action, StoredResponse(201, [], b"made")))
    assert _begin(cached, b"k").response.status == 201  # a replay warms the cache
    store._records.pop(action.claim.idempotency_key)  # the store lost the record
    assert isinstance(_begin(plain, b"k"), Execute)  # the plain engine asks the store
