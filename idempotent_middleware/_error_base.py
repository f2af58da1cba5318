"""The root of the package's errors, and the one a ``DataRecord`` raises.

Below both ``exceptions`` and ``persistence.record`` in the import graph: a record refuses an
unknown status with a typed error, and the exceptions module names records, so neither may
import the other. ``exceptions`` re-exports both classes; import them from there.
"""

from __future__ import annotations


class IdempotencyError(Exception):
    """Base class of every error this package raises on purpose."""


class IdempotencyInvalidStatusError(IdempotencyError, ValueError):
    """A ``DataRecord`` with a status other than ``INPROGRESS`` / ``COMPLETED`` (Powertools'
    name for the same check)."""


# Shown, pickled and documented under their public home.
IdempotencyError.__module__ = "idempotent_middleware.exceptions"
IdempotencyInvalidStatusError.__module__ = "idempotent_middleware.exceptions"
