"""R7: in the WSGI adapter, ``capturing_start_response`` calls the server's ``start_response``
first and only then copies the headers (``.encode("latin-1")``). A header value outside
Latin-1 (a filename in Content-Disposition, a translated message in a custom header) makes
the copy raise after the response was started at the server, inside the app's own call: the
app propagates it, the capture has no status yet, and the outcome is "application exception
before responding": the key is released and every retry runs the handler again.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)


def _lenient(status: str, headers: Any, exc_info: Any = None) -> Any:
    return lambda data: None


def _strict(status: str, headers: Any, exc_info: Any = None) -> Any:
    for name, value in headers:  # a server that encodes the headers as it is handed them
        name.encode("latin-1")
        value.encode("latin-1")
    return lambda data: None


@pytest.mark.parametrize("server", [_lenient, _strict], ids=["lenient", "strict"])
def test_r7_header_copy_error_after_start_response_releases_the_key(server: Any) -> None:
    runs: list[int] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        runs.append(1)  # the side effect: a payment, an email
        start_response(
            "201 Created",
            [("Content-Type", "text/plain"), ("Content-Disposition", 'inline; filename="€.txt"')],
        )
        return [b"made"]

    middleware = WSGIIdempotencyMiddleware(
        app, InMemoryPersistenceLayer(), IdempotencyConfig(lease_seconds=5)
    )
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        write = server(status, headers, exc_info)
        statuses.append(status)
        return write

    def request() -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/orders",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": "2",
            "HTTP_IDEMPOTENCY_KEY": "r7",
            "wsgi.input": io.BytesIO(b"{}"),
        }
        body = middleware(environ, start_response)
        try:
            list(body)
        finally:
            getattr(body, "close", lambda: None)()

    for _ in range(3):  # a strict server answers 500 (its own error); the client retries
        with contextlib.suppress(UnicodeEncodeError):
            request()
    assert runs == [1], f"the handler ran {len(runs)} times under one key"
    # The lenient server passed the app's response on: the middleware did not break it.
    if server is _lenient:
        assert statuses[0] == "201 Created", statuses
    assert statuses[-1].startswith("409"), statuses  # executed, its response not replayable
