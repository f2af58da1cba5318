"""Our WSGI middleware on Redis (REDIS_URL) around the shared Flask endpoints."""

import os

from common_wsgi import build_app

from idempotent_middleware import (
    IdempotencyConfig,
    RedisPersistenceLayer,
    WSGIIdempotencyMiddleware,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

app = build_app()
app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    persistence_store=RedisPersistenceLayer(url=REDIS_URL),
    config=IdempotencyConfig(),
)
