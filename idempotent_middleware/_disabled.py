"""The test-time switch: ``IDEMPOTENCY_DISABLED`` / ``POWERTOOLS_IDEMPOTENCY_DISABLED``.

Read on every call (not at import), so a test can set it with ``monkeypatch.setenv`` after the
decorators and middlewares were built. Two dictionary lookups per call when unset; the value is
parsed only when one of them is set. Truthy values are Powertools' ``strtobool`` ones.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("idempotent_middleware")

ENV_VARS = ("IDEMPOTENCY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED")
_TRUTHY = frozenset({"1", "y", "yes", "t", "true", "on"})
_warned = False


def idempotency_disabled() -> bool:
    """True when either variable holds a truthy value; warns once per process when it does.

    Either, not the first one set: ``IDEMPOTENCY_DISABLED=0`` left in a shell must not hide
    a deliberate ``POWERTOOLS_IDEMPOTENCY_DISABLED=1`` (each variable is read on its own).
    """
    ours = os.environ.get("IDEMPOTENCY_DISABLED")
    theirs = os.environ.get("POWERTOOLS_IDEMPOTENCY_DISABLED")
    if not ours and not theirs:
        return False
    if not (_truthy(ours) or _truthy(theirs)):
        return False
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "idempotency is DISABLED by the environment (%s): every call runs its handler; "
            "never set this in production",
            " / ".join(ENV_VARS),
        )
    return True


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUTHY
