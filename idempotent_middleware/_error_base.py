"""The root of the package's errors, and the ones a ``DataRecord`` raises (with their bases).

Below both ``exceptions`` and ``persistence.record`` in the import graph: a record refuses an
unknown status with a typed error, and the exceptions module names records, so neither may
import the other. ``exceptions`` re-exports both classes; import them from there.
"""

from __future__ import annotations


class IdempotencyError(Exception):
    """Base class of every error this package raises on purpose."""


class IdempotencyPersistenceLayerError(IdempotencyError):
    """The store could not be reached or answered with something unusable (HTTP 503)."""


class IdempotencyCorruptRecordError(IdempotencyPersistenceLayerError):
    """A stored record could not be decoded (truncated, foreign or from a newer format)."""


class IdempotencyInvalidStatusError(IdempotencyCorruptRecordError, ValueError):
    """A ``DataRecord`` with a status other than ``INPROGRESS`` / ``COMPLETED`` (Powertools'
    name for the same check).

    A corrupt record: a layer that reads such a status from its store (a foreign writer,
    Powertools' ``EXPIRED``) gets the store's answer (HTTP 503, never a 500 and never a
    second run), like any other record it cannot decode.
    """


# Shown, pickled and documented under their public home.
for _kind in (
    IdempotencyError,
    IdempotencyPersistenceLayerError,
    IdempotencyCorruptRecordError,
    IdempotencyInvalidStatusError,
):
    _kind.__module__ = "idempotent_middleware.exceptions"
del _kind
