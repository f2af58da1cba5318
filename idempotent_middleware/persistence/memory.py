"""In-memory persistence: the embedded default.

One process only: records live in this process's memory, so two workers (gunicorn, uvicorn
``--workers``) each have their own and can both run a handler for one key. Use
``RedisPersistenceLayer`` as soon as more than one process serves the API.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
)
from .base import STATUS_INPROGRESS, BasePersistenceLayer, DataRecord


class InMemoryPersistenceLayer(BasePersistenceLayer):
    """A dict behind one lock: safe under threads and asyncio (no await inside the lock).

    Bounded: past ``max_items`` the oldest records are evicted first. Expired records are
    dropped when touched and on eviction.
    """

    def __init__(self, max_items: int = 100_000) -> None:
        super().__init__()
        if max_items <= 0:
            raise ValueError("max_items must be positive")
        self._max_items = max_items
        self._records: OrderedDict[str, DataRecord] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

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

    def _put_record(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key
        with self._lock:
            existing = self._live(key)
            if existing is not None:
                raise IdempotencyItemAlreadyExistsError(existing)
            self._records[key] = data_record
            while len(self._records) > self._max_items:
                self._records.popitem(last=False)

    def _owned(self, data_record: DataRecord) -> DataRecord | None:
        """The live record under the key if ``data_record`` owns it; None if nobody does."""
        current = self._live(data_record.idempotency_key)
        if current is not None and current.owner != data_record.owner:
            raise IdempotencyOwnershipError(data_record.idempotency_key)
        return current

    def _update_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._owned(data_record)
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
