"""``DataRecord`` statuses: anything but INPROGRESS / COMPLETED is a typed error."""

from __future__ import annotations

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    DataRecord,
    IdempotencyInvalidStatusError,
    RedisPersistenceLayer,
)
from idempotent_middleware.persistence.base import STATUS_COMPLETED, encode_record
from tests.conftest import make_layer


@pytest.mark.parametrize("status", ["EXPIRED", "", "completed", "X"])
def test_unknown_status_is_refused_at_construction(status: str) -> None:
    with pytest.raises(IdempotencyInvalidStatusError):
        DataRecord("k", status)


def test_status_is_required() -> None:
    """No default that the record itself refuses: ``DataRecord("k")`` is a TypeError at the
    call, as for any missing argument (Powertools' ``""`` default names no state)."""
    with pytest.raises(TypeError, match="status"):
        DataRecord("k")  # type: ignore[call-arg]


def test_a_status_assigned_later_is_refused_typed_when_written(
    request: pytest.FixtureRequest,
) -> None:
    """The bare KeyError came from encoding such a record for Redis."""
    for kind in ("memory", "redis"):
        layer: BasePersistenceLayer = make_layer(kind, request)
        record = DataRecord("k", STATUS_COMPLETED, 1.0e10, None, b"x", "", b"o" * 16)
        record.status = "EXPIRED"
        with pytest.raises(IdempotencyInvalidStatusError):
            encode_record(record)
        if isinstance(layer, RedisPersistenceLayer):
            with pytest.raises(IdempotencyInvalidStatusError):
                layer._put_record(record)
            layer.close()
