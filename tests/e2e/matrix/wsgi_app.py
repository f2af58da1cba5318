"""The matrix app for WSGI servers: Flask behind ``WSGIIdempotencyMiddleware`` on Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, request

from idempotent_middleware import WSGIIdempotencyMiddleware
from tests.e2e.matrix.common import (
    CONFIG,
    SLOW_SECONDS,
    count_run,
    make_store,
    order_body,
    slow_body,
    stream_chunk,
)

KEY = "Idempotency-Key"

flask_app = Flask(__name__)
flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
    flask_app.wsgi_app, persistence_store=make_store(), config=CONFIG
)
app = flask_app


@flask_app.post("/orders")
def orders() -> Response:
    status, body = order_body(request.headers.get(KEY), request.get_data())
    return Response(body, status=status, mimetype="application/json")


@flask_app.post("/slow")
def slow() -> Response:
    key = request.headers.get(KEY)
    request.get_data()
    run = count_run(key)
    time.sleep(float(request.args.get("seconds", SLOW_SECONDS)))
    return Response(slow_body(key, run), status=202, mimetype="application/json")


@flask_app.post("/stream")
def stream() -> Response:
    count_run(request.headers.get(KEY))
    chunks = int(request.args.get("chunks", "8"))
    delay = float(request.args.get("delay", "0"))

    def body() -> Iterator[bytes]:
        for index in range(chunks):
            yield stream_chunk(index)
            if delay:
                time.sleep(delay)

    return Response(body(), mimetype="application/octet-stream")


@flask_app.get("/healthz")
def healthz() -> Response:
    return Response(b'{"ok": true}', mimetype="application/json")
