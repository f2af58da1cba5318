"""Peer: idemkit 1.0.2 WSGI middleware on Redis around the shared Flask endpoints."""

import os

from common_wsgi import build_app
from idemkit import HttpConfig, RedisBackend, WSGIIdempotencyMiddleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

app = build_app()
app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    backend=RedisBackend.from_url(REDIS_URL, namespace="bench:idemkit-wsgi"),
    config=HttpConfig(scope_mode="single_tenant"),
)
