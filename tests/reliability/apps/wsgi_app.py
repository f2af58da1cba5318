"""Flask twin of ``asgi_app`` for the process-level reliability tests (gunicorn).

Same environment, endpoints and counters as ``asgi_app``.
Run: REDIS_URL=redis://127.0.0.1:6379/0 gunicorn tests.reliability.apps.wsgi_app:app
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from flask import Flask, Response, request

from idempotent_middleware import (
    IdempotencyConfig,
    RedisPersistenceLayer,
    WSGIIdempotencyMiddleware,
)

REDIS_URL = os.environ["REDIS_URL"]
LEASE_SECONDS = float(os.environ.get("REL_LEASE_SECONDS", "2"))

counters = redis.Redis.from_url(REDIS_URL)
flask_app = Flask(__name__)


def _start_run() -> tuple[str, int]:
    key = request.headers.get("Idempotency-Key", "")
    run = int(counters.incr(f"rel:runs:{key}"))  # type: ignore[arg-type]
    counters.set(f"rel:pid:{key}", os.getpid())
    return key, run


@flask_app.post("/work")
def work() -> Any:
    spec = request.get_json(force=True)
    key, run = _start_run()
    time.sleep(float(spec.get("sleep_first", 0) if run == 1 else spec.get("sleep", 0)))
    if spec.get("fail_first") and run == 1:
        counters.rpush(f"rel:failed:{key}", run)
        raise RuntimeError(f"run {run} of {key} fails on purpose")
    counters.rpush(f"rel:done:{key}", run)
    return {"key": key, "run": run, "pid": os.getpid(), "token": uuid.uuid4().hex}, 201


@flask_app.post("/stream")
def stream() -> Any:
    spec = request.get_json(force=True)
    key, run = _start_run()
    chunks, delay = int(spec.get("chunks", 5)), float(spec.get("delay", 0.2))

    def body() -> Iterator[bytes]:
        for i in range(chunks):
            time.sleep(delay)
            yield f"chunk {i} of run {run}\n".encode()
        counters.rpush(f"rel:done:{key}", run)

    return Response(body(), status=200, mimetype="text/plain")


@flask_app.get("/healthz")
def healthz() -> Any:
    return {"ok": True, "pid": os.getpid()}


flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
    flask_app.wsgi_app,
    persistence_store=RedisPersistenceLayer(url=REDIS_URL),
    config=IdempotencyConfig(lease_seconds=LEASE_SECONDS),
)
app = flask_app
