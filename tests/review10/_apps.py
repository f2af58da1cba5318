"""What both rev10 review tests drive: one POST environ, a plain WSGI app, and the WSGI
middleware or a Flask app around it."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)

BODY = b'{"sku":"a"}'


def environ(**variables: Any) -> dict[str, Any]:
    """A keyed JSON POST to /orders; ``variables`` add or replace environ entries."""
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/orders",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(BODY),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "CONTENT_TYPE": "application/json",
        "HTTP_IDEMPOTENCY_KEY": "k-1",
        **variables,
    }


def plain(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]


def wsgi(**config: Any) -> Any:
    return WSGIIdempotencyMiddleware(plain, InMemoryPersistenceLayer(), IdempotencyConfig(**config))


def flask(**settings: Any) -> Any:
    flask_module = pytest.importorskip("flask")
    from idempotent_middleware.flask import Idempotency

    app = flask_module.Flask("rev10")
    app.config.update(IDEMPOTENCY_STORE=InMemoryPersistenceLayer(), **settings)
    Idempotency(app)
    app.post("/orders")(lambda: {"ok": True})
    return app.wsgi_app
