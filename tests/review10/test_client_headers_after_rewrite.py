"""Review of the lazy WSGI headers (rev10): the adapters rewrite ``CONTENT_LENGTH`` to the
length of the body they read (a chunked upload has none). Read lazily, the header list was
built after that rewrite, so a scope hook or a JMESPath key or fingerprint over headers saw
``content-length`` the client never sent: a 422 (or a second run, for a key over headers)
for an honest retry of a record stored before. The request keeps the client's headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from idempotent_middleware.http.request import HttpRequest
from idempotent_middleware.wsgi import environ_headers

from . import _apps
from ._apps import BODY


def _environ() -> dict[str, Any]:
    # chunked, decoded by the server: no CONTENT_LENGTH
    return _apps.environ(**{"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})


def _wsgi(scope: Callable[[HttpRequest], str | None]) -> Any:
    return _apps.wsgi(scope=scope)


def _flask(scope: Callable[[HttpRequest], str | None]) -> Any:
    return _apps.flask(IDEMPOTENCY_SCOPE=scope)


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
