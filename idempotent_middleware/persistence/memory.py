"""In-memory persistence: the embedded default.

One process only: records live in this process's memory, so two workers (gunicorn, uvicorn
``--workers``) each have their own and can both run a handler for one key. Use
``RedisPersistenceLayer`` as soon as more than one process serves the API.

Bounds (an unauthenticated client chooses the keys, so memory is bounded in bytes as well as in
records): ``max_items`` records and ``max_bytes`` of keys plus stored responses. Expired records
(results past their TTL, claims past their lease) are dropped first, by a sweep that costs
O(1) amortised per request. Live records are never evicted, neither in-progress claims nor
unexpired results: evicting a claim lets a duplicate run while the first still runs, evicting
a result lets a retry run again (promise 1). A store full of live records therefore refuses NEW
claims with ``IdempotencyStoreFullError`` (HTTP 503) and logs it; replays and the completion of
claims it already admitted keep working (a completion is always stored, so the bytes may pass
``max_bytes`` by the responses of the claims in flight). Size both bounds for your traffic
times ``expires_after_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import ItemsView, Iterator, ValuesView
from typing import Any

from .._forksafe import renew_after_fork
from ..exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
    IdempotencyStoreFullError,
)
from .base import (
    INVALIDATE_REFUSED,
    STATUS_INPROGRESS,
    BasePersistenceLayer,
    DataRecord,
    HeldUnread,
    check_limit,
    describe_record,
)

logger = logging.getLogger("idempotent_middleware")

#: How many live records of the current second a full store looks at for expired ones.
_FULL_SCAN_BUDGET = 64
#: A full store says so in the log at most this often (a flood must not flood the log too).
_FULL_LOG_INTERVAL = 10.0


def _expiry(record: DataRecord) -> float | None:
    """When the record stops being live (the rule of ``DataRecord.is_expired``)."""
    if record.status == STATUS_INPROGRESS and record.in_progress_expiry_timestamp is not None:
        return record.in_progress_expiry_timestamp / 1000
    return record.expiry_timestamp


def record_size(record: DataRecord) -> int:
    """What a record costs against ``max_bytes``: its key and its response."""
    key = record.idempotency_key
    return (len(key) if key.isascii() else 4 * len(key)) + len(record.response_data or b"")


class _RecordTable:
    """Records by key, indexed by the second they expire in, with their total size.

    Every write goes through ``__setitem__`` / ``__delitem__`` so the index and the byte count
    cannot drift. ``sweep`` drops whole buckets whose second has passed: each record is indexed
    and dropped once, so sweeping costs O(1) amortised per write, never a scan of the table.
    """

    __slots__ = ("_bucket_of", "_buckets", "_records", "_swept", "bytes")

    def __init__(self) -> None:
        self._records: dict[str, DataRecord] = {}
        self._bucket_of: dict[str, int] = {}
        self._buckets: dict[int, dict[str, None]] = {}
        self._swept = int(time.time())  # every bucket below this second is gone
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def get(self, key: str) -> DataRecord | None:
        return self._records.get(key)

    def values(self) -> ValuesView[DataRecord]:
        return self._records.values()

    def items(self) -> ItemsView[str, DataRecord]:
        return self._records.items()

    def __getitem__(self, key: str) -> DataRecord:
        return self._records[key]

    def __setitem__(self, key: str, record: DataRecord) -> None:
        self.pop(key)
        self.add(key, record, record_size(record))

    def add(self, key: str, record: DataRecord, size: int) -> None:
        """Store ``record`` under a key known to be absent, ``size`` its ``record_size``."""
        self._records[key] = record
        self.bytes += size
        expiry = _expiry(record)
        if expiry is not None:
            # Clamped: a record already expired goes to the bucket swept next.
            second = max(int(expiry), self._swept)
            self._bucket_of[key] = second
            self._buckets.setdefault(second, {})[key] = None

    def __delitem__(self, key: str) -> None:
        if self.pop(key) is None:
            raise KeyError(key)

    def pop(self, key: str, default: DataRecord | None = None) -> DataRecord | None:
        record = self._records.pop(key, None)
        if record is None:
            return default
        self.bytes -= record_size(record)
        second = self._bucket_of.pop(key, None)
        if second is not None:
            bucket = self._buckets.get(second)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self._buckets[second]
        return record

    def sweep(self) -> None:
        """Drop every record whose expiry second has passed."""
        now = int(time.time())
        if now <= self._swept:
            return
        if not self._buckets:
            self._swept = now
            return
        # Walk the seconds since the last sweep, or the buckets when there are fewer of them
        # (after an idle stretch): either way bounded by work already paid for.
        if now - self._swept <= len(self._buckets):
            due = [s for s in range(self._swept, now) if s in self._buckets]
        else:
            due = [s for s in self._buckets if s < now]
        self._swept = now
        for second in due:
            self._drop_expired(list(self._buckets.get(second, ())), len(self._records))

    def sweep_current(self) -> None:
        """A full store looks harder: the current second's bucket, within a budget."""
        bucket = self._buckets.get(self._swept)
        if bucket:
            self._drop_expired(list(bucket), _FULL_SCAN_BUDGET)

    def _drop_expired(self, keys: list[str], live_budget: int) -> None:
        for key in keys:
            record = self._records.get(key)
            if record is None:
                continue
            if record.is_expired:
                self.pop(key)
                continue
            # Not expired (the wall clock stepped back): index it again where it belongs.
            self[key] = record
            live_budget -= 1
            if live_budget <= 0:
                return


class InMemoryPersistenceLayer(BasePersistenceLayer):
    """A dict behind one lock: safe under threads and asyncio (no await inside the lock).

    Bounded by ``max_items`` records and ``max_bytes`` (keys plus responses, 256 MiB by
    default); see the module docstring for what happens when full.
    """

    kind = "memory"

    def __init__(self, max_items: int = 100_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        super().__init__()
        if max_items <= 0:
            raise ValueError("max_items must be positive")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._records = _RecordTable()
        self._lock = threading.Lock()
        # Quiesced: a fork mid-write would hand the child a table out of step with its index.
        renew_after_fork(self, "_lock", quiesce=True)
        self._refused = 0
        self._full_logged_at = -_FULL_LOG_INTERVAL

    def __len__(self) -> int:
        return len(self._records)

    @property
    def bytes_used(self) -> int:
        """Keys plus stored responses, the quantity ``max_bytes`` bounds."""
        return self._records.bytes

    def _live(self, key: str) -> DataRecord | None:
        record = self._records.get(key)
        if record is not None and record.is_expired:
            del self._records[key]
            return None
        return record

    def _get_record(self, idempotency_key: str) -> DataRecord:
        with self._lock:
            record = self._live(idempotency_key)
        if record is None:
            raise IdempotencyItemNotFoundError(idempotency_key)
        return record

    def _full(self, size: int) -> bool:
        records = self._records
        return len(records) >= self._max_items or records.bytes + size > self._max_bytes

    def _put_record(self, data_record: DataRecord) -> None:
        existing = self._claim_now(data_record)
        if existing is not None:
            raise IdempotencyItemAlreadyExistsError(existing)

    def _claim_now(self, data_record: DataRecord) -> DataRecord | None:
        """Store the claim unless a live record holds its key; return that record."""
        key = data_record.idempotency_key
        records = self._records
        with self._lock:
            existing = self._live(key)
            if existing is not None:
                return existing
            records.sweep()
            size = record_size(data_record)
            if self._full(size):
                records.sweep_current()
                if self._full(size):
                    self._refuse()
            records.add(key, data_record, size)  # absent: _live dropped an expired one
        return None

    # ``_claim_record`` skips ``_put_record`` only while it is the original: a subclass, a
    # patch of the class or of this instance (a test's fault injection, a wrapper changing
    # what a conflict says) must see every claim. Checked through the bound methods, never
    # ``self.__dict__`` (reading it turns every attribute of the layer into a dict lookup).
    def _claim_record(self, data_record: DataRecord) -> DataRecord | HeldUnread | None:
        if getattr(self._put_record, "__func__", None) is not _OWN_PUT:
            return super()._claim_record(data_record)
        return self._claim_now(data_record)

    async def _claim_record_async(self, data_record: DataRecord) -> DataRecord | HeldUnread | None:
        if (
            getattr(self._put_record, "__func__", None) is not _OWN_PUT
            or getattr(self._put_record_async, "__func__", None) is not _BASE_PUT_ASYNC
        ):
            return await super()._claim_record_async(data_record)
        return self._claim_now(data_record)

    def _refuse(self) -> None:
        """Called under the lock: count, log now and then, raise."""
        self._refused += 1
        now = time.monotonic()
        if now - self._full_logged_at >= _FULL_LOG_INTERVAL:
            self._full_logged_at = now
            logger.error(
                "in-memory idempotency store full (%d records, %d bytes; max_items=%d, "
                "max_bytes=%d): refusing new claims (%d refused so far)",
                len(self._records),
                self._records.bytes,
                self._max_items,
                self._max_bytes,
                self._refused,
                extra={
                    "idempotency_store": "memory",
                    "idempotency_error": "IdempotencyStoreFullError",
                },
            )
        raise IdempotencyStoreFullError("the in-memory idempotency store is full")

    def _owned(self, data_record: DataRecord) -> DataRecord | None:
        """The live record under the key if ``data_record`` owns it; None if nobody does."""
        current = self._live(data_record.idempotency_key)
        if current is not None and current.owner != data_record.owner:
            raise IdempotencyOwnershipError(data_record.idempotency_key)
        return current

    def _update_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._owned(data_record)
            self._records.sweep()
            self._records[data_record.idempotency_key] = data_record

    def _delete_record(self, data_record: DataRecord) -> None:
        with self._lock:
            if self._owned(data_record) is not None:
                del self._records[data_record.idempotency_key]

    def _renew_lease(self, data_record: DataRecord) -> None:
        """Contract C1, as the Redis layer's ``renew.lua``: replace this owner's in-progress
        claim with the renewed one, take an absent key back, refuse anything else."""
        with self._lock:
            current = self._owned(data_record)
            if current is not None and current.status != STATUS_INPROGRESS:
                raise IdempotencyOwnershipError(data_record.idempotency_key)
            self._records[data_record.idempotency_key] = data_record

    # --- Readiness and operator inspection ----------------------------------------------------
    def ping(self) -> None:
        """Always ready: the records live in this process."""

    async def ping_async(self) -> None:
        """Always ready: the records live in this process."""

    def inspect_record(self, storage_key: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._live(storage_key)
        return None if record is None else describe_record(record)

    def list_records(self, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        check_limit(limit)
        with self._lock:
            found = [
                r for k, r in self._records.items() if k.startswith(prefix) and not r.is_expired
            ]
        found.sort(key=lambda r: r.idempotency_key)
        return [describe_record(r) for r in found[:limit]]

    def invalidate_record(self, storage_key: str, force: bool = False) -> bool:
        with self._lock:
            record = self._live(storage_key)
            if record is None:
                return False
            if record.status == STATUS_INPROGRESS and not force:
                raise IdempotencyAlreadyInProgressError(INVALIDATE_REFUSED.format(key=storage_key))
            del self._records[storage_key]
            return True

    def record_counts(self) -> dict[str, int]:
        """Live records by status."""
        with self._lock:
            counts: dict[str, int] = {}
            for record in self._records.values():
                if not record.is_expired:
                    counts[record.status] = counts.get(record.status, 0) + 1
        return counts


#: What ``_claim_record`` and ``settles_inline`` check are still the originals.
_OWN_PUT = InMemoryPersistenceLayer._put_record
_BASE_PUT_ASYNC = BasePersistenceLayer._put_record_async
_BASE_UPDATE_ASYNC = BasePersistenceLayer._update_record_async
_BASE_DELETE_ASYNC = BasePersistenceLayer._delete_record_async


def settles_inline(layer: object) -> bool:
    """Whether a settling write to ``layer`` may start in the caller's task (``to_the_end``):
    only this class, unpatched, is known to enter no timeout, cancel scope or context
    token on the way. Checked per call, as ``_claim_record`` checks: a test or wrapper may
    patch the instance at any time."""
    return (
        type(layer) is InMemoryPersistenceLayer
        and getattr(layer._update_record_async, "__func__", None) is _BASE_UPDATE_ASYNC
        and getattr(layer._delete_record_async, "__func__", None) is _BASE_DELETE_ASYNC
    )
