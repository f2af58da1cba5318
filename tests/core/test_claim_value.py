"""A claim answers with what holds the key (``_claim_record``) instead of raising.

A replay is the ordinary outcome of a retry: the in-memory layer tells it without building,
raising and throwing an ``IdempotencyItemAlreadyExistsError`` through the drivers. What must
not change: ``_put_record`` stays the contract (it raises, as Powertools'), and a layer whose
``_put_record`` was replaced (a subclass, a patch of the class or of the instance) sees every
claim the core makes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from idempotent_middleware import InMemoryPersistenceLayer
from idempotent_middleware import exceptions as exceptions_module
from idempotent_middleware._core import Claimed, Replay, plan_claim, plan_complete
from idempotent_middleware._steps import drive, drive_async
from idempotent_middleware.exceptions import IdempotencyItemAlreadyExistsError
from idempotent_middleware.persistence.base import HELD_UNREAD, DataRecord


def _claim(layer: Any) -> Any:
    return plan_claim(layer, "k", "fp", lease_seconds=30, expires_after_seconds=60)


def _complete(layer: InMemoryPersistenceLayer) -> DataRecord:
    won = drive(layer, _claim(layer))
    assert isinstance(won, Claimed)
    drive(layer, plan_complete(layer, won.record, b"result", 60))
    return won.record


@pytest.fixture
def raised(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every ``IdempotencyItemAlreadyExistsError`` built."""
    built: list[int] = []
    original = IdempotencyItemAlreadyExistsError.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(exceptions_module.IdempotencyItemAlreadyExistsError, "__init__", counting)
    return built


def test_memory_replay_builds_no_conflict_error(raised: list[int]) -> None:
    layer = InMemoryPersistenceLayer()
    _complete(layer)
    replay = drive(layer, _claim(layer))
    assert isinstance(replay, Replay) and replay.record.response_data == b"result"
    replay = asyncio.run(drive_async(layer, _claim(layer)))
    assert isinstance(replay, Replay) and replay.record.response_data == b"result"
    assert raised == []


def test_memory_put_record_still_raises_with_the_record() -> None:
    """The Powertools contract of ``_put_record`` is unchanged."""
    layer = InMemoryPersistenceLayer()
    claim = _complete(layer)
    again = layer.new_inprogress_record("k", "fp", 30, 60)
    with pytest.raises(IdempotencyItemAlreadyExistsError) as caught:
        layer._put_record(again)
    assert caught.value.old_data_record is not None
    assert caught.value.old_data_record.owner == claim.owner
    assert layer._claim_record(again) == caught.value.old_data_record


class _CountingPuts(InMemoryPersistenceLayer):
    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    def _put_record(self, data_record: DataRecord) -> None:
        self.puts += 1
        super()._put_record(data_record)


@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_subclass_overriding_put_record_sees_every_claim(run: str) -> None:
    layer = _CountingPuts()
    drive_plan = drive if run == "sync" else lambda ly, p: asyncio.run(drive_async(ly, p))
    first = drive_plan(layer, _claim(layer))
    assert isinstance(first, Claimed)
    drive(layer, plan_complete(layer, first.record, b"result", 60))
    assert isinstance(drive_plan(layer, _claim(layer)), Replay)
    assert layer.puts == 2


@pytest.mark.parametrize("name", ["_put_record", "_put_record_async"])
def test_an_instance_patch_of_put_sees_every_claim(name: str) -> None:
    """A test's fault injection on one layer instance is never bypassed by the fast path."""
    layer = InMemoryPersistenceLayer()

    def refuse(data_record: DataRecord) -> Any:
        raise IdempotencyItemAlreadyExistsError()  # held, by nothing the layer names

    async def refuse_async(data_record: DataRecord) -> None:
        refuse(data_record)

    setattr(layer, name, refuse if name == "_put_record" else refuse_async)
    assert asyncio.run(layer._claim_record_async(layer.new_inprogress_record("k", "", 1, 1))) is (
        HELD_UNREAD
    )
    if name == "_put_record":
        assert layer._claim_record(layer.new_inprogress_record("k", "", 1, 1)) is HELD_UNREAD


def test_a_class_patch_of_put_sees_every_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = InMemoryPersistenceLayer._put_record

    def spying(self: InMemoryPersistenceLayer, data_record: DataRecord) -> None:
        seen.append(data_record.idempotency_key)
        original(self, data_record)

    monkeypatch.setattr(InMemoryPersistenceLayer, "_put_record", spying)
    layer = InMemoryPersistenceLayer()
    assert isinstance(drive(layer, _claim(layer)), Claimed)
    assert seen == ["k"]
