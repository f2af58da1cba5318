"""Our WSGI middleware around the shared Flask endpoints, on the store BENCH_STORE picks
(Redis by default; see ``stores.py``)."""

from common_wsgi import build_app
from stores import build_store

from idempotent_middleware import IdempotencyConfig, WSGIIdempotencyMiddleware

app = build_app()
app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    persistence_store=build_store(),
    config=IdempotencyConfig(),
)
