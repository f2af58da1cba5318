"""``current_claim()``: bound by the core on a won claim, ended wherever the completion runs,
and never kept alive by the registry of live claims."""

from __future__ import annotations

import contextvars
import gc
import threading

from idempotent_middleware import InMemoryPersistenceLayer, current_claim
from idempotent_middleware import _claim as claims
from idempotent_middleware._claim import bind, unbind
from idempotent_middleware.persistence.base import DataRecord


def _record(layer: InMemoryPersistenceLayer, key: str = "k") -> DataRecord:
    return layer.new_inprogress_record(key, "", 30, 60)


def test_a_completion_in_another_thread_ends_the_handlers_claim() -> None:
    layer = InMemoryPersistenceLayer()
    record = _record(layer)
    context = contextvars.Context()  # empty: no claim another test left bound
    context.run(bind, layer, record, 60)
    bound = context.run(current_claim)
    assert bound is not None and bound.record is record and bound.active
    thread = threading.Thread(target=unbind, args=(record,))
    thread.start()
    thread.join()
    assert not bound.active
    assert context.run(current_claim) is None
    assert record.owner not in claims._live


def test_an_inner_claim_ended_makes_the_outer_one_current_again() -> None:
    layer = InMemoryPersistenceLayer()
    outer, inner = _record(layer, "outer"), _record(layer, "inner")

    def nested() -> None:
        bind(layer, outer, 60)
        bind(layer, inner, 60)
        claim = current_claim()
        assert claim is not None and claim.record is inner
        unbind(inner)
        claim = current_claim()
        assert claim is not None and claim.record is outer
        unbind(outer)
        assert current_claim() is None

    contextvars.Context().run(nested)


def test_a_claim_never_ended_is_not_kept_alive_by_the_registry() -> None:
    """Its context gone (a request that died between claim and completion), the claim is
    collected and leaves no entry behind; ending it later is a no-op."""
    layer = InMemoryPersistenceLayer()
    record = _record(layer)
    contextvars.Context().run(bind, layer, record, 60)
    gc.collect()
    assert record.owner not in claims._live
    unbind(record)
