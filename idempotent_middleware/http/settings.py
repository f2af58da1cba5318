"""Settings as frameworks write them (a dict, ``app.config`` keys) turned into one engine.

Django's ``settings.IDEMPOTENCY`` and Flask's ``IDEMPOTENCY_*`` keys name the same things:
a store (a URL or a store object) and the ``IdempotencyConfig`` options by their field names.
Unknown names are an error at start-up, not a silently ignored typo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..config import IdempotencyConfig
from ..exceptions import IdempotencyConfigurationError
from ..persistence.base import BasePersistenceLayer
from .engine import HttpIdempotency
from .request import HttpRequest

Scope = Callable[[HttpRequest], str | None]

_FIELDS = frozenset(f.name for f in dataclasses.fields(IdempotencyConfig))


def store_from(value: object) -> BasePersistenceLayer:
    """A store object as is; ``None`` or ``memory://``: in-memory; ``redis://``,
    ``rediss://``, ``unix://``: Redis at that URL."""
    if isinstance(value, BasePersistenceLayer):
        return value
    if value is None or value == "memory://":
        from ..persistence.memory import InMemoryPersistenceLayer

        return InMemoryPersistenceLayer()
    if isinstance(value, str) and value.startswith(("redis://", "rediss://", "unix://")):
        from ..persistence.redis import RedisPersistenceLayer

        return RedisPersistenceLayer(url=value)
    raise IdempotencyConfigurationError(
        f"idempotency store must be a store object or a memory:// or redis:// URL, not {value!r}"
    )


def config_from(options: Mapping[str, Any], default_scope: Scope | None) -> IdempotencyConfig:
    """``options``: ``config`` (an IdempotencyConfig to start from) and any of its field names,
    case-insensitive. Without a ``scope`` option, ``default_scope`` is used (the framework's
    authenticated user); ``scope: None`` turns scoping off."""
    given = {name.lower(): value for name, value in options.items()}
    base = given.pop("config", None) or IdempotencyConfig()
    if not isinstance(base, IdempotencyConfig):
        raise IdempotencyConfigurationError("'config' must be an IdempotencyConfig")
    unknown = sorted(set(given) - _FIELDS)
    if unknown:
        raise IdempotencyConfigurationError(f"unknown idempotency options: {', '.join(unknown)}")
    if "scope" not in given and base.scope is None:
        given["scope"] = default_scope
    return dataclasses.replace(base, **given) if given else base


def engine_from(
    store: object, options: Mapping[str, Any], default_scope: Scope | None
) -> HttpIdempotency:
    return HttpIdempotency(config_from(options, default_scope), store_from(store))
