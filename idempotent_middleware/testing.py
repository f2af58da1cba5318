"""A conformance suite for custom persistence layers (pytest is imported here only).

Subclass :class:`PersistenceLayerConformance` in a test module and implement ``make_layer``;
or call :func:`run_conformance` with a factory. Every check drives the layer through the same
code the middleware runs (the ``_core`` plans and the ``_steps`` drivers), so a layer that
passes behaves under the middleware as it does here.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from ._core import Claimed, Replay, plan_claim, plan_complete, plan_release, plan_renew
from ._steps import GET, Step, drive, drive_async
from .exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyCorruptRecordError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from .persistence.base import STATUS_COMPLETED, STATUS_INPROGRESS, BasePersistenceLayer
from .persistence.record import DataRecord

_RACERS = 8
_ROUNDS = 5
_MIB = 1024 * 1024


def _key() -> str:
    return f"conformance#{uuid.uuid4().hex}"


def _claim(
    layer: BasePersistenceLayer, key: str, lease: float = 30.0, expires: float = 60.0, h: str = ""
) -> Replay | Claimed:
    return drive(
        layer, plan_claim(layer, key, h, lease_seconds=lease, expires_after_seconds=expires)
    )


def _won(layer: BasePersistenceLayer, key: str, lease: float = 30.0) -> DataRecord:
    outcome = _claim(layer, key, lease)
    assert isinstance(outcome, Claimed), (
        f"claim of a fresh key did not win: _put_record on an absent key gave {outcome!r}"
    )
    return outcome.record


def _read(layer: BasePersistenceLayer, key: str) -> DataRecord | None:
    def plan() -> Any:
        return (yield Step(GET, key))

    try:
        record: DataRecord = drive(layer, plan())
    except IdempotencyItemNotFoundError:
        return None
    return record


def _complete(layer: BasePersistenceLayer, claim: DataRecord, data: bytes) -> DataRecord | None:
    return drive(layer, plan_complete(layer, claim, data, 60.0, background=False))


def _race_threads(
    layer: BasePersistenceLayer, key: str
) -> tuple[list[DataRecord], list[BaseException]]:
    """``_RACERS`` threads claim ``key`` at once; the winners' claims and any errors."""
    barrier = threading.Barrier(_RACERS)
    wins: list[DataRecord] = []
    errors: list[BaseException] = []

    def race() -> None:
        barrier.wait()
        try:
            outcome = _claim(layer, key)
        except IdempotencyAlreadyInProgressError:
            return
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            return
        if isinstance(outcome, Claimed):
            wins.append(outcome.record)

    threads = [threading.Thread(target=race) for _ in range(_RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins, errors


class _NoRecordOnConflict:
    """The layer, but its conflicts carry no record (as Powertools layers raise them)."""

    def __init__(self, layer: BasePersistenceLayer) -> None:
        self._layer = layer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)

    def _put_record(self, record: DataRecord) -> None:
        try:
            self._layer._put_record(record)
        except IdempotencyItemAlreadyExistsError:
            raise IdempotencyItemAlreadyExistsError() from None


class _AlwaysConflict(_NoRecordOnConflict):
    def _put_record(self, record: DataRecord) -> None:
        raise IdempotencyItemAlreadyExistsError()


class PersistenceLayerConformance:
    """Subclass as ``TestMyLayer`` and implement ``make_layer``.

    Optionally implement ``corrupt_record(self, layer, key)`` (store bytes under ``key`` that
    your layer cannot decode); the corrupt-record check is skipped without it.
    """

    def make_layer(self) -> BasePersistenceLayer:
        raise NotImplementedError("implement make_layer() to return your persistence layer")

    @pytest.fixture
    def layer(self) -> Iterator[BasePersistenceLayer]:
        store = self.make_layer()
        yield store
        close = getattr(store, "close", None)
        if callable(close):
            close()

    # --- Atomic claim ----------------------------------------------------------------------
    def test_atomic_claim_threads(self, layer: BasePersistenceLayer) -> None:
        for _ in range(_ROUNDS):
            wins, errors = _race_threads(layer, _key())
            assert not errors, f"atomic claim: racing claims raised {errors!r}"
            assert len(wins) == 1, (
                f"atomic claim broken: {_RACERS} threads raced _put_record on one key and "
                f"{len(wins)} won (exactly 1 must): _put_record must check and set in one "
                "atomic operation"
            )

    def test_atomic_claim_async_tasks(self, layer: BasePersistenceLayer) -> None:
        async def main() -> int:
            key = _key()

            async def one() -> bool:
                plan = plan_claim(layer, key, "", lease_seconds=30.0, expires_after_seconds=60.0)
                try:
                    return isinstance(await drive_async(layer, plan), Claimed)
                except IdempotencyAlreadyInProgressError:
                    return False

            return sum(await asyncio.gather(*(one() for _ in range(_RACERS))))

        won = asyncio.run(main())
        assert won == 1, (
            f"atomic claim broken (async path): {_RACERS} asyncio tasks raced "
            f"_put_record_async on one key and {won} won (exactly 1 must)"
        )

    # --- Leases and fencing ----------------------------------------------------------------
    def test_expired_lease_is_taken_over(self, layer: BasePersistenceLayer) -> None:
        key = _key()
        first = _won(layer, key, lease=0.3)
        time.sleep(0.5)
        outcome = _claim(layer, key)
        assert isinstance(outcome, Claimed) and outcome.record.owner != first.owner, (
            "lease expiry broken: an in-progress claim whose lease ran out was not taken over "
            f"by a new claim (got {outcome!r}); _put_record must treat it as absent"
        )

    def test_renewed_lease_is_kept(self, layer: BasePersistenceLayer) -> None:
        key = _key()
        claim = _won(layer, key, lease=0.5)
        assert drive(layer, plan_renew(claim, 30.0)), (
            "lease renewal broken: _renew_lease refused the owner's own live claim"
        )
        time.sleep(0.7)
        with pytest.raises(IdempotencyAlreadyInProgressError):
            outcome = _claim(layer, key)
            pytest.fail(
                "lease renewal broken: a renewed claim was taken over once its first lease "
                f"ran out (got {outcome!r}); _renew_lease must push the lease forward"
            )

    def _stale_and_new(self, layer: BasePersistenceLayer) -> tuple[str, DataRecord, DataRecord]:
        key = _key()
        stale = _won(layer, key, lease=0.3)
        time.sleep(0.5)
        new = _won(layer, key)
        return key, stale, new

    def _assert_new_owner_holds(
        self, layer: BasePersistenceLayer, key: str, new: DataRecord, what: str
    ) -> None:
        current = _read(layer, key)
        assert (
            current is not None
            and current.owner == new.owner
            and current.status == STATUS_INPROGRESS
        ), (
            f"fencing broken: a stale owner's {what} changed the new owner's claim "
            f"(record now {current!r}); {what} must check the record's owner token"
        )

    def test_fencing_complete(self, layer: BasePersistenceLayer) -> None:
        key, stale, new = self._stale_and_new(layer)
        stored = _complete(layer, stale, b"stale")
        assert stored is None, (
            "fencing broken: _update_record stored a stale owner's result over the new "
            "owner's claim instead of raising IdempotencyOwnershipError"
        )
        self._assert_new_owner_holds(layer, key, new, "_update_record")
        done = _complete(layer, new, b"fresh")
        assert done is not None, "the owner's own completion was refused"

    def test_fencing_release(self, layer: BasePersistenceLayer) -> None:
        key, stale, new = self._stale_and_new(layer)
        drive(layer, plan_release(layer, stale))
        self._assert_new_owner_holds(layer, key, new, "_delete_record")

    def test_fencing_renew(self, layer: BasePersistenceLayer) -> None:
        key, stale, new = self._stale_and_new(layer)
        renewed = drive(layer, plan_renew(stale, 30.0))
        assert not renewed, (
            "fencing broken: _renew_lease renewed a stale owner's claim over the new owner's "
            "instead of raising IdempotencyOwnershipError"
        )
        self._assert_new_owner_holds(layer, key, new, "_renew_lease")

    def test_fencing_renew_async(self, layer: BasePersistenceLayer) -> None:
        """The ASGI middleware's lease renewer renews through the async path."""
        key, stale, new = self._stale_and_new(layer)
        renewed = asyncio.run(drive_async(layer, plan_renew(stale, 30.0)))
        assert not renewed, (
            "fencing broken (async path): _renew_lease_async renewed a stale owner's claim "
            "over the new owner's instead of raising IdempotencyOwnershipError"
        )
        self._assert_new_owner_holds(layer, key, new, "_renew_lease_async")

    @pytest.mark.parametrize("path", ["sync", "async"])
    def test_renew_after_own_completion_refused(
        self, layer: BasePersistenceLayer, path: str
    ) -> None:
        """A renewer racing its handler's completion must not turn the result into a claim."""
        key = _key()
        claim = _won(layer, key)
        _complete(layer, claim, b"done")
        plan = plan_renew(claim, 30.0)
        renewed = drive(layer, plan) if path == "sync" else asyncio.run(drive_async(layer, plan))
        current = _read(layer, key)
        assert not renewed and current is not None and current.status == STATUS_COMPLETED, (
            f"renew broken ({path} path): the owner's renewal after its own completion "
            f"{'was accepted' if renewed else 'was refused'} and the record is now "
            f"{current!r}; _renew_lease must refuse a COMPLETED record (contract C1)"
        )
        assert current.response_data == b"done", "the completed result was altered by a renew"

    def test_fencing_async(self, layer: BasePersistenceLayer) -> None:
        key, stale, new = self._stale_and_new(layer)

        async def main() -> DataRecord | None:
            await drive_async(layer, plan_release(layer, stale))
            return await drive_async(
                layer, plan_complete(layer, stale, b"stale", 60.0, background=False)
            )

        assert asyncio.run(main()) is None, (
            "fencing broken (async path): _update_record_async stored a stale owner's result"
        )
        self._assert_new_owner_holds(layer, key, new, "_delete_record_async")

    # --- TTL ---------------------------------------------------------------------------------
    def test_completed_record_expires(self, layer: BasePersistenceLayer) -> None:
        key = _key()
        claim = _won(layer, key)
        drive(layer, plan_complete(layer, claim, b"done", 1.0, background=False))
        time.sleep(1.5)
        current = _read(layer, key)
        assert current is None or current.is_expired, (
            f"TTL broken: a record completed with expires_after_seconds=1 still reads as live "
            f"1.5 s later ({current!r})"
        )
        outcome = _claim(layer, key)
        assert isinstance(outcome, Claimed), (
            f"TTL broken: a claim on a key whose result expired did not win (got {outcome!r})"
        )

    def test_result_outlives_the_claim_lease(self, layer: BasePersistenceLayer) -> None:
        """A store-side expiry set from the claim's lease must be replaced at completion."""
        key = _key()
        claim = _won(layer, key, lease=0.3)
        drive(layer, plan_complete(layer, claim, b"done", 3600.0, background=False))
        time.sleep(0.6)
        outcome = _claim(layer, key)
        assert isinstance(outcome, Replay) and outcome.record.response_data == b"done", (
            "TTL broken: a result completed with expires_after_seconds=3600 under a 0.3 s "
            f"lease was gone once the lease had passed (a retry got {outcome!r}); completion "
            "must give the record the result's life, not keep the claim's"
        )

    # --- Payloads ------------------------------------------------------------------------
    @pytest.mark.parametrize(
        "data",
        [b"", b"0", b"null", b"\x00\xff\x00", os.urandom(_MIB)],
        ids=["empty", "zero", "null", "binary", "1MiB"],
    )
    def test_payload_round_trip(self, layer: BasePersistenceLayer, data: bytes) -> None:
        key = _key()
        claim = _won(layer, key)
        _complete(layer, claim, data)
        outcome = _claim(layer, key)
        assert isinstance(outcome, Replay) and outcome.record.status == STATUS_COMPLETED, (
            f"payload lost: a completed record did not replay (got {outcome!r:.80})"
        )
        got = outcome.record.response_data
        assert got == data, (
            f"payload altered: stored {len(data)} bytes {data[:16]!r}..., read back "
            f"{None if got is None else len(got)} bytes {got[:16] if got else got!r}; "
            "response_data must round-trip byte for byte (b'' and other falsy values too)"
        )

    def test_payload_round_trip_async(self, layer: BasePersistenceLayer) -> None:
        key = _key()
        data = b""

        async def main() -> Any:
            plan = plan_claim(layer, key, "", lease_seconds=30.0, expires_after_seconds=60.0)
            claim = await drive_async(layer, plan)
            await drive_async(
                layer, plan_complete(layer, claim.record, data, 60.0, background=False)
            )
            plan = plan_claim(layer, key, "", lease_seconds=30.0, expires_after_seconds=60.0)
            return await drive_async(layer, plan)

        outcome = asyncio.run(main())
        assert isinstance(outcome, Replay) and outcome.record.response_data == data, (
            f"payload lost (async path): b'' stored, replay gave {outcome!r}"
        )

    def test_different_payload_hash_refused(self, layer: BasePersistenceLayer) -> None:
        key = _key()
        claim = _claim(layer, key, h="a" * 64)
        assert isinstance(claim, Claimed)
        _complete(layer, claim.record, b"{}")
        with pytest.raises(IdempotencyValidationError):
            outcome = _claim(layer, key, h="b" * 64)
            pytest.fail(
                "payload validation broken: a retry with another payload hash was answered "
                f"({outcome!r}); the layer must store payload_hash on every record"
            )

    def test_corrupt_record(self, layer: BasePersistenceLayer) -> None:
        corrupt: Callable[[BasePersistenceLayer, str], None] | None
        corrupt = getattr(self, "corrupt_record", None)
        if corrupt is None:
            pytest.skip("no corrupt_record(layer, key) hook")
        key = _key()
        corrupt(layer, key)
        with pytest.raises(IdempotencyCorruptRecordError):
            got = _read(layer, key)
            pytest.fail(
                f"corrupt record not reported: _get_record returned {got!r} for undecodable "
                "bytes instead of raising IdempotencyCorruptRecordError"
            )

    # --- Conflicts with and without the record ------------------------------------------
    def test_conflict_with_record_resolves(self, layer: BasePersistenceLayer) -> None:
        key = _key()
        claim = _won(layer, key)
        with pytest.raises(IdempotencyAlreadyInProgressError):
            _claim(layer, key)
        _complete(layer, claim, b"x")
        try:
            layer._put_record(layer.new_inprogress_record(key, "", 30.0, 60.0))
        except IdempotencyItemAlreadyExistsError as exc:
            held = exc.old_data_record
            assert held is None or held.status == STATUS_COMPLETED, (
                f"_put_record's conflict carried a record that is not the live one: {held!r}"
            )
        else:
            pytest.fail("_put_record overwrote a live completed record instead of refusing")

    def test_conflict_without_record_resolves(self, layer: BasePersistenceLayer) -> None:
        key = _key()
        claim = _won(layer, key)
        _complete(layer, claim, b"x")
        bare: Any = _NoRecordOnConflict(layer)
        outcome = _claim(bare, key)
        assert isinstance(outcome, Replay) and outcome.record.response_data == b"x", (
            f"a conflict without its record (then read with _get_record) gave {outcome!r}"
        )
        with pytest.raises(IdempotencyPersistenceLayerError):
            _claim(_AlwaysConflict(layer), _key())  # type: ignore[arg-type]


def run_conformance(
    factory: Callable[[], BasePersistenceLayer],
    *,
    verbose: bool = False,
    pytest_args: Sequence[str] = (),
) -> int:
    """Run the suite against ``factory()`` in this process; return pytest's exit code."""
    global _FACTORY
    with tempfile.TemporaryDirectory() as tmp:
        name = f"test_conformance_{uuid.uuid4().hex}"
        path = os.path.join(tmp, f"{name}.py")
        with open(path, "w") as module:
            module.write(
                "from idempotent_middleware import testing\n\n"
                "class TestConformance(testing.PersistenceLayerConformance):\n"
                "    def make_layer(self):\n"
                "        return testing._factory()()\n"
            )
        ini = os.path.join(tmp, "pytest.ini")
        with open(ini, "w") as config:
            config.write("[pytest]\n")
        _FACTORY = factory
        try:
            args = [path, "-c", ini, "--rootdir", tmp, "-p", "no:cacheprovider", "-rfEs"]
            args.append("-v" if verbose else "-q")
            return int(pytest.main([*args, *pytest_args]))
        finally:
            _FACTORY = None
            sys.modules.pop(name, None)  # each run collects its own module


_FACTORY: Callable[[], BasePersistenceLayer] | None = None


def _factory() -> Callable[[], BasePersistenceLayer]:
    if _FACTORY is None:
        raise RuntimeError("run_conformance() sets the factory")
    return _FACTORY


__all__ = ["PersistenceLayerConformance", "run_conformance"]
