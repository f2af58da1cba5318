"""Our ASGI middleware around the shared endpoints.

One module serves every variant, chosen by environment so the harness can start them side
by side: BENCH_STORE picks the store (see ``stores.py``), BENCH_LOCAL_CACHE=0|1 sets
IdempotencyConfig(use_local_cache=...).
"""

import os

from common_asgi import build_app
from stores import build_store

from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware

LOCAL_CACHE = os.environ.get("BENCH_LOCAL_CACHE", "0") == "1"

app = build_app()
app.add_middleware(
    IdempotencyMiddleware,
    persistence_store=build_store(),
    config=IdempotencyConfig(use_local_cache=LOCAL_CACHE),
)
