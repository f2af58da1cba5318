"""Peer: idemkit 1.0.2 as app-wide ASGI middleware on Redis.

Library defaults are kept apart from declaring the app single-tenant, since the
benchmark has no per-user scope. Runs from its own virtualenv (see run.py).
"""

import os

from common_asgi import build_app
from idemkit import HttpConfig, IdempotencyMiddleware, RedisBackend

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

app = build_app()
app.add_middleware(
    IdempotencyMiddleware,
    backend=RedisBackend.from_url(REDIS_URL, namespace="bench:idemkit"),
    config=HttpConfig(scope_mode="single_tenant"),
)
