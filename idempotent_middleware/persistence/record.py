"""``DataRecord``: one idempotency record, as every layer reads and writes it.

Its own module, below the exceptions and the layers in the import graph: exceptions carry
records, layers build them, and neither needs the other to know what a record is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .._error_base import IdempotencyInvalidStatusError

STATUS_INPROGRESS = "INPROGRESS"
STATUS_COMPLETED = "COMPLETED"
_KNOWN_STATUSES = frozenset({STATUS_INPROGRESS, STATUS_COMPLETED})


@dataclass(slots=True)
class DataRecord:
    """One idempotency record. Treat instances as values: layers never mutate them.

    ``status`` is required: the seed's default ``""`` names no state, and a record built
    without one would be refused below anyway, so the missing argument is reported as such.
    """

    idempotency_key: str
    status: str
    #: Unix time (seconds, float) after which the record is gone.
    expiry_timestamp: float | None = None
    #: Unix time in milliseconds at which an in-progress lease runs out (the seed's unit).
    in_progress_expiry_timestamp: int | None = None
    response_data: bytes | None = None
    payload_hash: str = ""
    #: 16 random bytes naming the execution that claimed the key; the fence for writes.
    owner: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        # Every layer and the record encoding know these two states only; anything else (a
        # Powertools "EXPIRED", a typo) is refused here, typed, not deep inside a write.
        if self.status not in _KNOWN_STATUSES:
            raise IdempotencyInvalidStatusError(
                f"unknown idempotency record status {self.status!r}: "
                f"expected one of {sorted(_KNOWN_STATUSES)}"
            )

    @property
    def is_expired(self) -> bool:
        now = time.time()
        if self.status == STATUS_INPROGRESS and self.in_progress_expiry_timestamp is not None:
            return self.in_progress_expiry_timestamp < now * 1000
        return self.expiry_timestamp is not None and self.expiry_timestamp < now

    @property
    def outcome_unknown(self) -> bool:
        """Executed, outcome unknown: completed without any response (an interrupted run).

        Every completion stores response bytes (``b"null"`` for a None result), so a COMPLETED
        record without them can only be the marker ``outcome_unknown_record`` writes.
        """
        return self.status == STATUS_COMPLETED and self.response_data is None

    def response_json_as_dict(self) -> Any:
        """The stored result decoded as JSON (``idempotent_function`` stores JSON)."""
        return None if self.response_data is None else json.loads(self.response_data)
