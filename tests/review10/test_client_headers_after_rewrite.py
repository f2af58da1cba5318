"""Review of the lazy WSGI headers (rev10): the adapters rewrite ``CONTENT_LENGTH`` to the
length of the body they read (a chunked upload has none). Read lazily, the header list was
built after that rewrite, so a scope hook or a JMESPath key or fingerprint over headers saw
``content-length`` the client never sent: a 422 (or a second run, for a key over headers)
for an honest retry of a record stored before. The request keeps the client's headers."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware.http.request import HttpRequest
from idempotent_middleware.wsgi import environ_headers

BODY = b'{"sku":"a"}'


def _environ() -> dict[str, Any]:
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
        "wsgi.input_terminated": True,  # chunked, decoded by the server: no CONTENT_LENGTH
        "CONTENT_TYPE": "application/json",
        "HTTP_IDEMPOTENCY_KEY": "k-1",
        "HTTP_TRANSFER_ENCODING": "chunked",
    }


def _plain(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]


def _wsgi(scope: Callable[[HttpRequest], str | None]) -> Any:
    config = IdempotencyConfig(scope=scope)
    return WSGIIdempotencyMiddleware(_plain, InMemoryPersistenceLayer(), config)


def _flask(scope: Callable[[HttpRequest], str | None]) -> Any:
    flask = pytest.importorskip("flask")
    from idempotent_middleware.flask import Idempotency

    app = flask.Flask("rev10")
    app.config.update(IDEMPOTENCY_STORE=InMemoryPersistenceLayer(), IDEMPOTENCY_SCOPE=scope)
    Idempotency(app)
    app.post("/orders")(lambda: {"ok": True})
    return app.wsgi_app


@pytest.mark.parametrize("build", [_wsgi, _flask], ids=["wsgi", "flask"])
def test_headers_read_after_the_body_are_the_clients(build: Any) -> None:
    requests: list[HttpRequest] = []

    def scope(request: HttpRequest) -> str | None:
        requests.append(request)
        return None

    app = build(scope)
    environ = _environ()
    sent = dict(environ_headers(environ))
    b"".join(app(environ, lambda status, headers, exc_info=None: None))
    assert environ.get("CONTENT_LENGTH") == str(len(BODY))  # the app got the rewrite
    seen = [dict(request.headers) for request in requests]  # read after it, as a late event
    assert seen == [sent]
