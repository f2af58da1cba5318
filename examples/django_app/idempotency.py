"""The example's store and middleware settings, shared by ``wsgi.py`` and the views."""

from __future__ import annotations

from examples._store import make_store
from idempotent_middleware import IdempotencyConfig, RouteOptions

store = make_store()

config = IdempotencyConfig(
    lease_seconds=10,
    # Per route: payments must carry a key, and their records live a week.
    routes={
        "/payments": RouteOptions(raise_on_no_idempotency_key=True, expires_after_seconds=7 * 86400)
    },
)
