"""A WSGI app for ``gunicorn --preload``: it uses the lease renewer at import, in the master,
so every worker is a fork of a process whose renewer thread already ran.

Environment: ``REDIS_URL`` (required), ``REL_LEASE_SECONDS`` (default 1), ``REL_SLOW_SECONDS``
(default 3). ``POST /slow`` counts its runs under ``rel:runs:<key>`` and sleeps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from idempotent_middleware import (
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware._lease import sync_renewer

REDIS_URL = os.environ["REDIS_URL"]
LEASE_SECONDS = float(os.environ.get("REL_LEASE_SECONDS", "1"))
SLOW_SECONDS = float(os.environ.get("REL_SLOW_SECONDS", "3"))

# Touch the renewer in the master: its thread starts here and does not survive the fork.
_warm = InMemoryPersistenceLayer()
_claim = _warm.new_inprogress_record("preload#warm", "fp", 30, 60)
_warm._put_record(_claim)
sync_renewer.start(_warm, _claim, 30).stop()

counters = redis.Redis.from_url(REDIS_URL)


def _inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    key = environ.get("HTTP_IDEMPOTENCY_KEY", "")
    run = counters.incr(f"rel:runs:{key}")
    time.sleep(SLOW_SECONDS)
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [f"run {run} pid {os.getpid()}".encode()]


app = WSGIIdempotencyMiddleware(
    _inner,
    RedisPersistenceLayer(url=REDIS_URL),
    IdempotencyConfig(lease_seconds=LEASE_SECONDS),
)
