"""The test-time switch: ``IDEMPOTENCY_DISABLED`` / ``POWERTOOLS_IDEMPOTENCY_DISABLED``.

Read on every call (not at import), so a test can set it with ``monkeypatch.setenv`` after the
decorators and middlewares were built. Two dictionary lookups per call when unset, in the
dictionary behind ``os.environ`` (its ``get`` encodes each name and goes through two Python
frames: about 8,000 instructions a read); the value is parsed only when one of them is set.
Truthy values are Powertools' ``strtobool`` ones.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("idempotent_middleware")

ENV_VARS = ("IDEMPOTENCY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED")
_TRUTHY = frozenset({"1", "y", "yes", "t", "true", "on"})
_warned = False

#: ``os.environ`` as imported and the dictionary it keeps its variables in (encoded names; every
#: change made through ``os.environ`` lands there, and it is never replaced). If ``os.environ``
#: itself is swapped for another mapping (or has no such dictionary), that mapping is asked.
_ENVIRON = os.environ
_DATA: dict[object, object] | None = getattr(_ENVIRON, "_data", None)
_OURS: object = None
_THEIRS: object = None
if isinstance(_DATA, dict):
    try:
        _OURS, _THEIRS = (_ENVIRON.encodekey(name) for name in ENV_VARS)
    except Exception:  # not CPython's os._Environ: ask the mapping
        _DATA = None
else:
    _DATA = None


def idempotency_disabled() -> bool:
    """True when either variable holds a truthy value; warns once per process when it does.

    Either, not the first one set: ``IDEMPOTENCY_DISABLED=0`` left in a shell must not hide
    a deliberate ``POWERTOOLS_IDEMPOTENCY_DISABLED=1`` (each variable is read on its own).
    """
    if os.environ is _ENVIRON and _DATA is not None and _OURS not in _DATA and _THEIRS not in _DATA:
        return False  # neither is set: what the two reads below would conclude
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
