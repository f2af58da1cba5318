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
    """True when either variable holds a truthy value; warns once per process when it does."""
    value = os.environ.get("IDEMPOTENCY_DISABLED") or os.environ.get(
        "POWERTOOLS_IDEMPOTENCY_DISABLED"
    )
    if not value or value.strip().lower() not in _TRUTHY:
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
