"""Apps for the SQLite end-to-end test: one database file, no server, several workers.

``IDEM_SQLITE_PATH`` is the store's file, ``IDEM_EXEC_LOG`` a file to which every execution
of the handler appends one line (``O_APPEND``: whole lines, whichever process writes), so the
test counts executions across workers without any shared service.

Run:  export IDEM_SQLITE_PATH=/tmp/i.db IDEM_EXEC_LOG=/tmp/runs
      gunicorn -w 4 tests.e2e.sqlite_apps:wsgi_app
      uvicorn --workers 4 tests.e2e.sqlite_apps:asgi_app
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    SQLitePersistenceLayer,
    WSGIIdempotencyMiddleware,
)

store = SQLitePersistenceLayer(os.environ["IDEM_SQLITE_PATH"])
if os.environ.get("IDEM_TOUCH_AT_IMPORT") == "1":
    # With ``gunicorn --preload`` this runs in the master: it opens a connection there, which
    # every forked worker inherits and must never use.
    store.purge_expired()
_LOG = os.environ["IDEM_EXEC_LOG"]
_CONFIG = IdempotencyConfig(lease_seconds=10)
#: The handler takes a moment, so that duplicates meet the claim in flight too.
_WORK_SECONDS = 0.02


def _execute(key: str, body: bytes) -> bytes:
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return json.dumps(
        {"key": key, "order_id": uuid.uuid4().hex, "pid": os.getpid(), "echo": json.loads(body)}
    ).encode()


def _plain_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    time.sleep(_WORK_SECONDS)
    payload = _execute(environ.get("HTTP_IDEMPOTENCY_KEY", ""), body)
    start_response("201 Created", [("Content-Type", "application/json")])
    return [payload]


wsgi_app = WSGIIdempotencyMiddleware(_plain_wsgi, persistence_store=store, config=_CONFIG)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _plain_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    key = dict(scope["headers"]).get(b"idempotency-key", b"").decode("latin-1")
    await asyncio.sleep(_WORK_SECONDS)
    payload = _execute(key, b"".join(chunks))
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


asgi_app = IdempotencyMiddleware(_plain_asgi, persistence_store=store, config=_CONFIG)
