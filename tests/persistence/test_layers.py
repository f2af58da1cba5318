"""The persistence contract, run on the in-memory layer, fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyCorruptRecordError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
    IdempotencyValidationError,
)
from idempotent_middleware.persistence.base import (
    STATUS_COMPLETED,
    STATUS_INPROGRESS,
    BasePersistenceLayer,
    DataRecord,
)


def claim(layer: BasePersistenceLayer, key: str = "scope#k", lease: float = 30.0) -> DataRecord:
    record = layer.new_inprogress_record(key, "fp", lease, 60)
    layer._put_record(record)
    return record


def test_claim_then_conflict_returns_the_live_record(layer: BasePersistenceLayer) -> None:
    first = claim(layer)
    with pytest.raises(IdempotencyItemAlreadyExistsError) as info:
        claim(layer)
    existing = info.value.old_data_record
    assert existing is not None
    assert existing.status == STATUS_INPROGRESS
    assert existing.owner == first.owner
    assert existing.payload_hash == "fp"


def test_get_missing_raises_not_found(layer: BasePersistenceLayer) -> None:
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record("scope#absent")


def test_complete_by_owner_keeps_bytes_and_hash(layer: BasePersistenceLayer) -> None:
    first = claim(layer)
    body = bytes(range(256)) + b"\x00[]{}"
    layer._update_record(layer.completed_record(first, body, 60))
    stored = layer._get_record(first.idempotency_key)
    assert stored.status == STATUS_COMPLETED
    assert stored.response_data == body
    assert stored.payload_hash == "fp"


@pytest.mark.parametrize("result", [b"", b"0", b"[]", b"{}", b"null", b"false"])
def test_falsy_results_survive_storage(layer: BasePersistenceLayer, result: bytes) -> None:
    first = claim(layer)
    layer._update_record(layer.completed_record(first, result, 60))
    assert layer._get_record(first.idempotency_key).response_data == result


def test_stale_owner_cannot_complete_or_release(layer: BasePersistenceLayer) -> None:
    stale = claim(layer, lease=0.2)
    time.sleep(0.35)
    newer = claim(layer)  # the lease ran out: the key is claimable again
    with pytest.raises(IdempotencyOwnershipError):
        layer._update_record(layer.completed_record(stale, b"stale", 60))
    with pytest.raises(IdempotencyOwnershipError):
        layer._delete_record(stale)
    with pytest.raises(IdempotencyOwnershipError):
        layer._renew_lease(stale)
    survivor = layer._get_record(newer.idempotency_key)
    assert survivor.owner == newer.owner
    assert survivor.status == STATUS_INPROGRESS


def test_release_by_owner_frees_the_key(layer: BasePersistenceLayer) -> None:
    first = claim(layer)
    layer._delete_record(first)
    with pytest.raises(IdempotencyItemNotFoundError):
        layer._get_record(first.idempotency_key)
    claim(layer)


def test_completed_record_expires_and_can_be_claimed_again(layer: BasePersistenceLayer) -> None:
    first = claim(layer)
    layer._update_record(layer.completed_record(first, b"x", 0.2))
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        claim(layer)
    time.sleep(0.35)
    claim(layer)


def test_renewal_keeps_the_lease_alive(layer: BasePersistenceLayer) -> None:
    first = claim(layer, lease=0.3)
    for _ in range(3):
        time.sleep(0.15)
        layer._renew_lease(
            replace(first, in_progress_expiry_timestamp=int((time.time() + 0.3) * 1000))
        )
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        claim(layer)


@pytest.mark.parametrize("expired", ["lease", "ttl"])
def test_expired_record_reclaimed_by_exactly_one_of_50_threads(
    layer: BasePersistenceLayer, expired: str
) -> None:
    first = claim(layer, lease=0.2)
    if expired == "ttl":
        layer._update_record(layer.completed_record(first, b"old", 0.2))
    time.sleep(0.35)
    winners: list[DataRecord] = []
    barrier = threading.Barrier(50)

    def contend() -> None:
        record = layer.new_inprogress_record(first.idempotency_key, "fp", 30, 60)
        barrier.wait()
        try:
            layer._put_record(record)
        except IdempotencyItemAlreadyExistsError:
            return
        winners.append(record)

    threads = [threading.Thread(target=contend) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert layer._get_record(first.idempotency_key).owner == winners[0].owner


def test_exactly_one_of_50_tasks_wins(layer: BasePersistenceLayer) -> None:
    async def main() -> int:
        async def contend() -> bool:
            record = layer.new_inprogress_record("scope#async", "fp", 30, 60)
            try:
                await layer._put_record_async(record)
            except IdempotencyItemAlreadyExistsError:
                return False
            return True

        results = await asyncio.gather(*(contend() for _ in range(50)))
        return sum(results)

    assert asyncio.run(main()) == 1


def test_async_methods_follow_the_same_contract(layer: BasePersistenceLayer) -> None:
    async def main() -> None:
        record = layer.new_inprogress_record("scope#a", "fp", 30, 60)
        await layer._put_record_async(record)
        stale = replace(record, owner=b"x" * 16)
        with pytest.raises(IdempotencyOwnershipError):
            await layer._update_record_async(layer.completed_record(stale, b"no", 60))
        await layer._renew_lease_async(record)
        await layer._update_record_async(layer.completed_record(record, b"yes", 60))
        assert (await layer._get_record_async("scope#a")).response_data == b"yes"
        await layer._delete_record_async(layer.completed_record(record, b"", 60))
        with pytest.raises(IdempotencyItemNotFoundError):
            await layer._get_record_async("scope#a")

    asyncio.run(main())


# --- The public template methods (the seed's API) ---------------------------------------------
def test_public_methods_store_hash_and_replay_honest_retry(layer: BasePersistenceLayer) -> None:
    config = IdempotencyConfig(
        event_key_jmespath="id", payload_validation_jmespath="amount", use_local_cache=True
    )
    scheme = layer.configure(config, "pay")
    data = {"id": "p-1", "amount": 10}
    claimed = layer.save_inprogress(data, scheme=scheme)
    assert claimed is not None
    assert claimed.idempotency_key.startswith("pay#")
    layer.save_success(data, b"0", claim=claimed, scheme=scheme)
    record = layer.get_record(data, scheme=scheme)
    assert record is not None
    assert record.payload_hash == scheme.payload_hash(data) != ""
    assert record.response_data == b"0"
    with pytest.raises(IdempotencyValidationError):
        layer.get_record({"id": "p-1", "amount": 11}, scheme=scheme)
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        layer.save_inprogress(data, scheme=scheme)


def test_public_async_methods(layer: BasePersistenceLayer) -> None:
    scheme = layer.configure(IdempotencyConfig(event_key_jmespath="id"), "fn")

    async def main() -> None:
        data = {"id": 7}
        claimed = await layer.save_inprogress_async(data, scheme=scheme)
        assert claimed is not None
        await layer.delete_record_async(data, ValueError("x"), claim=claimed)
        again = await layer.save_inprogress_async(data, scheme=scheme)
        assert again is not None
        await layer.save_success_async(data, b"[]", claim=again, scheme=scheme)
        record = await layer.get_record_async(data, scheme=scheme)
        assert record is not None
        assert record.response_data == b"[]"

    asyncio.run(main())


def test_local_cache_never_holds_in_progress_records(layer: BasePersistenceLayer) -> None:
    scheme = layer.configure(IdempotencyConfig(use_local_cache=True), "fn")
    claimed = layer.save_inprogress({"a": 1}, scheme=scheme)
    assert claimed is not None
    assert layer._retrieve_from_cache(claimed.idempotency_key) is None
    layer.save_success({"a": 1}, b"1", claim=claimed, scheme=scheme)
    cached = layer._retrieve_from_cache(claimed.idempotency_key)
    assert cached is not None
    assert cached.status == STATUS_COMPLETED


def test_missing_key_is_skipped_or_raises(layer: BasePersistenceLayer) -> None:
    from idempotent_middleware import IdempotencyKeyError

    scheme = layer.configure(IdempotencyConfig(event_key_jmespath="id"), "fn")
    assert layer.save_inprogress({"other": 1}, scheme=scheme) is None
    strict = layer.configure(
        IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=True), "fn"
    )
    with pytest.raises(IdempotencyKeyError):
        layer.save_inprogress({"other": 1}, scheme=strict)


def test_corrupt_record_is_a_typed_error() -> None:
    from idempotent_middleware.persistence.base import decode_record, encode_record

    record = DataRecord("k", STATUS_COMPLETED, 1.0, None, b"body", "ab", b"o" * 16)
    raw = encode_record(record)
    assert decode_record("k", raw) == record
    for bad in (b"", raw[:10], b"\x09" + raw[1:], raw[:2] + b"X" * 16):
        with pytest.raises(IdempotencyCorruptRecordError):
            decode_record("k", bad if bad != raw[:2] + b"X" * 16 else raw[:20])


# --- Contract C1: renewal (item 20) -------------------------------------------------------------
def renewed(record: DataRecord, lease: float) -> DataRecord:
    return replace(record, in_progress_expiry_timestamp=int((time.time() + lease) * 1000))


def test_item20_renewed_claim_reads_back_with_the_new_lease(layer: BasePersistenceLayer) -> None:
    first = claim(layer, lease=1.0)
    longer = renewed(first, 30.0)
    layer._renew_lease(longer)
    stored = layer._get_record(first.idempotency_key)
    # Equal up to the trip to the store: a layer judged by the database's clock (PostgreSQL)
    # reads back "now + what the database says is left", not the bytes the app wrote.
    assert stored.in_progress_expiry_timestamp is not None
    assert longer.in_progress_expiry_timestamp is not None
    assert abs(stored.in_progress_expiry_timestamp - longer.in_progress_expiry_timestamp) < 1000
    assert stored.owner == first.owner
    assert stored.status == STATUS_INPROGRESS
    time.sleep(1.3)  # past the first lease: the record (and its TTL) follow the renewal
    assert not layer._get_record(first.idempotency_key).is_expired


def test_item20_renewal_of_an_absent_key_takes_it_back(layer: BasePersistenceLayer) -> None:
    first = claim(layer, lease=0.2)
    time.sleep(0.35)
    layer._renew_lease(renewed(first, 30.0))
    stored = layer._get_record(first.idempotency_key)
    assert stored.owner == first.owner
    assert stored.status == STATUS_INPROGRESS
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        claim(layer)


def test_item20_renewal_refuses_other_owners_and_completed_records(
    layer: BasePersistenceLayer,
) -> None:
    first = claim(layer)
    with pytest.raises(IdempotencyOwnershipError):
        layer._renew_lease(renewed(replace(first, owner=b"y" * 16), 30.0))
    layer._update_record(layer.completed_record(first, b"done", 60))
    with pytest.raises(IdempotencyOwnershipError):
        layer._renew_lease(renewed(first, 30.0))
    stored = layer._get_record(first.idempotency_key)
    assert stored.status == STATUS_COMPLETED
    assert stored.response_data == b"done"


# --- The in-memory layer's bounds (item 6) -------------------------------------------------------
def test_item6_flood_never_evicts_an_in_flight_claim() -> None:
    from idempotent_middleware import IdempotencyStoreFullError, InMemoryPersistenceLayer

    layer = InMemoryPersistenceLayer(max_items=10)
    live = claim(layer, "fn#live")
    refused = 0
    for i in range(100):
        try:
            claim(layer, f"fn#flood{i}")
        except IdempotencyStoreFullError:
            refused += 1
    assert refused == 91
    with pytest.raises(IdempotencyItemAlreadyExistsError) as info:
        claim(layer, "fn#live")
    assert info.value.old_data_record == live


def test_item6_expired_records_make_room_unexpired_results_stay() -> None:
    from idempotent_middleware import IdempotencyStoreFullError, InMemoryPersistenceLayer

    layer = InMemoryPersistenceLayer(max_items=3)
    done = claim(layer, "fn#done")
    layer._update_record(layer.completed_record(done, b"kept", 60))
    claim(layer, "fn#crashed1", lease=-1.0)  # leases already run out: a crashed worker's
    claim(layer, "fn#crashed2", lease=-1.0)
    claim(layer, "fn#new1")
    claim(layer, "fn#new2")
    with pytest.raises(IdempotencyStoreFullError):
        claim(layer, "fn#new3")
    assert layer._get_record("fn#done").response_data == b"kept"


def test_item6_bounded_in_bytes_and_completion_of_an_admitted_claim_is_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from idempotent_middleware import IdempotencyStoreFullError, InMemoryPersistenceLayer

    layer = InMemoryPersistenceLayer(max_bytes=10_000)
    claims = [claim(layer, f"fn#{i}") for i in range(4)]
    for c in claims:
        layer._update_record(layer.completed_record(c, b"x" * 3000, 60))
    # Four 3000-byte results: over the cap, yet every admitted claim kept its result.
    assert all(layer._get_record(c.idempotency_key).response_data for c in claims)
    with (
        caplog.at_level("ERROR", logger="idempotent_middleware"),
        pytest.raises(IdempotencyStoreFullError),
    ):
        claim(layer, "fn#more")
    assert "full" in caplog.text


def test_item6_expired_records_are_swept_without_being_touched() -> None:
    from idempotent_middleware import InMemoryPersistenceLayer

    layer = InMemoryPersistenceLayer(max_items=1000)
    for i in range(50):
        claim(layer, f"fn#old{i}", lease=-2.0)
    time.sleep(1.1)  # the sweep works in whole seconds: let the current one pass
    claim(layer, "fn#fresh")
    assert len(layer) == 1
    assert layer.bytes_used == len("fn#fresh")


# --- remaining_time_in_millis (item 19) -----------------------------------------------------------
@pytest.mark.parametrize("remaining", [0, -5])
def test_item19_no_remaining_time_is_refused_not_a_default_lease(remaining: int) -> None:
    from idempotent_middleware import IdempotencyNoTimeLeftError, InMemoryPersistenceLayer

    layer = InMemoryPersistenceLayer()
    scheme = layer.configure(IdempotencyConfig(), "fn")
    with pytest.raises(IdempotencyNoTimeLeftError):
        layer.save_inprogress({"a": 1}, remaining, scheme=scheme)
    assert len(layer) == 0
    claimed = layer.save_inprogress({"a": 1}, 2000, scheme=scheme)
    assert claimed is not None
    assert claimed.in_progress_expiry_timestamp is not None
    assert claimed.in_progress_expiry_timestamp <= (time.time() + 2.5) * 1000
