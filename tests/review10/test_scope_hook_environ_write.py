"""Review rev10b: before the lazy headers (5440908) the header list was taken when the
request object was built; now it is built on first use, in ``begin`` *after* the scope hook
ran. A scope hook that writes the environ (here: it takes the credential off the environ so
the app never sees the raw token) changes the JMESPath document, hence the storage key, from
what 5440908 computed for the same request: a retry after the upgrade runs a second time."""

from __future__ import annotations

import io
import sys
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
KEY = '[headers."idempotency-key", headers.authorization]'


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
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "HTTP_IDEMPOTENCY_KEY": "k-1",
        "HTTP_AUTHORIZATION": "Bearer t-1",
    }


def _environ_of(request: HttpRequest) -> dict[str, Any]:
    raw = request.raw
    return raw if isinstance(raw, dict) else raw.environ  # WSGI environ / Werkzeug request


def _app(environ: dict[str, Any], start_response: Any) -> Any:
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]


def _wsgi(scope: Any) -> Any:
    config = IdempotencyConfig(scope=scope, event_key_jmespath=KEY)
    return WSGIIdempotencyMiddleware(_app, InMemoryPersistenceLayer(), config)


def _flask(scope: Any) -> Any:
    flask = pytest.importorskip("flask")
    from idempotent_middleware.flask import Idempotency

    app = flask.Flask("rev10b")
    app.config.update(
        IDEMPOTENCY_STORE=InMemoryPersistenceLayer(),
        IDEMPOTENCY_SCOPE=scope,
        IDEMPOTENCY_EVENT_KEY_JMESPATH=KEY,
    )
    Idempotency(app)
    app.post("/orders")(lambda: {"ok": True})
    return app.wsgi_app


@pytest.mark.parametrize("build", [_wsgi, _flask], ids=["wsgi", "flask"])
def test_key_document_is_the_request_as_built(build: Any) -> None:
    requests: list[HttpRequest] = []

    def scope(request: HttpRequest) -> str | None:
        requests.append(request)
        token = _environ_of(request).pop("HTTP_AUTHORIZATION", None)  # kept from the app
        return None if token is None else "tenant-of-" + token[-3:]

    app = build(scope)
    environ = _environ()
    sent = {k.decode(): v.decode() for k, v in environ_headers(environ)}
    b"".join(app(environ, lambda status, headers, exc_info=None: None))
    assert len(requests) == 1
    # The key material was read from this document (cached by begin).
    assert requests[0].document()["headers"] == sent
