"""The streaming endpoints of ``streaming_app.py`` as a Flask app behind the WSGI middleware.

Run by the e2e tests as ``gunicorn tests.e2e.streaming_wsgi_app:app``: the same bytes, served
by generators (chunked, no Content-Length), so both adapters face the same checks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, request

from examples._store import count_execution, make_store
from idempotent_middleware import RedisPersistenceLayer, WSGIIdempotencyMiddleware
from tests.e2e.streaming_app import SSE_DELAY_SECONDS, pattern_chunks, sse_event

store = make_store()
_runs: list[int] = []

app = Flask(__name__)
app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, persistence_store=store
)


@app.post("/stream")
def stream() -> Response:
    count_execution(store, _runs)
    mib = int(request.args.get("mib", "20"))
    return Response(pattern_chunks(mib), mimetype="application/octet-stream")


@app.post("/events")
def events() -> Response:
    count_execution(store, _runs)
    n = int(request.args.get("n", "200"))

    def body() -> Iterator[bytes]:
        for index in range(n):
            yield sse_event(index)
            time.sleep(SSE_DELAY_SECONDS)

    return Response(body(), mimetype="text/event-stream", headers={"cache-control": "no-cache"})


@app.get("/executions")
def executions() -> dict[str, int]:
    if isinstance(store, RedisPersistenceLayer):
        return {"executions": int(store.sync_client().get("examples:executions") or 0)}
    return {"executions": len(_runs)}


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}
