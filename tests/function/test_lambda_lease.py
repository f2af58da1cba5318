"""``idempotent``: the lease of a Lambda-style handler is renewed like any other, the remaining
time only bounding its length; unusable remaining times are typed errors; methods key on the
event, never on ``self``."""

from __future__ import annotations

import decimal
import threading
import time
from typing import Any

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyError,
    IdempotencyNoTimeLeftError,
    InMemoryPersistenceLayer,
    idempotent,
)


class FixedContext:
    """A context whose remaining time never moves (a stub, as in many tests of handlers)."""

    def __init__(self, millis: Any) -> None:
        self.millis = millis

    def get_remaining_time_in_millis(self) -> Any:
        return self.millis


@pytest.mark.parametrize("millis", [100, 5])
def test_handler_outliving_its_registered_time_is_not_run_again(millis: int) -> None:
    store = InMemoryPersistenceLayer()
    runs: list[int] = []
    started, finish = threading.Event(), threading.Event()

    @idempotent(persistence_store=store)
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        runs.append(1)
        if len(runs) == 1:
            started.set()
            finish.wait(10)
        return {"run": len(runs)}

    first = threading.Thread(target=handler, args=({"order": 1}, FixedContext(millis)))
    first.start()
    assert started.wait(10)
    # Well past its registered time, the first call still runs: a retry is refused.
    finish.wait(0.4)
    with pytest.raises(IdempotencyAlreadyInProgressError):
        handler({"order": 1}, FixedContext(millis))
    finish.set()
    first.join()
    assert runs == [1]
    assert handler({"order": 1}, FixedContext(millis)) == {"run": 1}


@pytest.mark.parametrize(
    "millis",
    [float("inf"), float("-inf"), float("nan"), "soon", None, True, decimal.Decimal("sNaN")],
)
def test_unusable_remaining_time_is_typed_and_claims_nothing(millis: Any) -> None:
    store = InMemoryPersistenceLayer()
    runs: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: dict[str, Any], context: Any) -> int:
        runs.append(1)
        return 1

    with pytest.raises(IdempotencyError):
        handler({"order": 1}, FixedContext(millis))
    assert runs == [] and len(store) == 0


@pytest.mark.parametrize("millis", [0.5, 0.999, 1e-9, -(10**400)])
def test_under_a_millisecond_is_no_time_left(millis: float) -> None:
    store = InMemoryPersistenceLayer()

    @idempotent(persistence_store=store)
    def handler(event: dict[str, Any], context: Any) -> int:
        return 1

    with pytest.raises(IdempotencyNoTimeLeftError):
        handler({"order": 1}, FixedContext(millis))
    assert len(store) == 0


@pytest.mark.parametrize("millis", [10**30, 10**16, 1e300, 10**400])
def test_huge_remaining_time_is_capped_by_the_lease(
    store: BasePersistenceLayer, millis: float
) -> None:
    runs: list[int] = []

    @idempotent(persistence_store=store)
    def handler(event: dict[str, Any], context: Any) -> int:
        runs.append(1)
        return len(runs)

    event = {"order": repr(millis)}
    assert handler(event, FixedContext(millis)) == 1
    assert handler(event, FixedContext(millis)) == 1


def test_a_method_handler_keys_on_the_event_not_on_self() -> None:
    store = InMemoryPersistenceLayer()

    class Handler:
        @idempotent(persistence_store=store)
        def __call__(self, event: dict[str, Any], context: Any) -> int:
            return int(event["n"])

        @idempotent(persistence_store=store)
        def handle(self, event: dict[str, Any], context: Any) -> int:
            return int(event["n"]) * 10

    h = Handler()
    assert [h({"n": 1}, None), h({"n": 2}, None), h({"n": 1}, None)] == [1, 2, 1]
    assert [h.handle({"n": 3}, None), h.handle(event={"n": 4}, context=None)] == [30, 40]


def test_a_handler_without_an_event_parameter_is_refused_at_decoration() -> None:
    with pytest.raises(TypeError):

        @idempotent(persistence_store=InMemoryPersistenceLayer())
        def handler() -> int:
            return 1


def test_the_lease_follows_a_short_invocation_when_shorter() -> None:
    """The claim's lease is the remaining time when that is shorter than ``lease_seconds``:
    a retry after a crashed invocation waits no longer than it could have run."""
    store = InMemoryPersistenceLayer()
    seen: list[float] = []

    @idempotent(persistence_store=store)
    def handler(event: dict[str, Any], context: Any) -> int:
        (record,) = [store._records.get(k) for k in list(store._records)]
        seen.append(record.in_progress_expiry_timestamp / 1000 - time.time())
        return 1

    handler({"order": 1}, FixedContext(2000))
    assert 0 < seen[0] <= 2.0
