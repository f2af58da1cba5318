"""Review rev10b: before the lazy headers (5440908) the header list was taken when the
request object was built; now it is built on first use, in ``begin`` *after* the scope hook
ran. A scope hook that writes the environ (here: it takes the credential off the environ so
the app never sees the raw token) changes the JMESPath document, hence the storage key, from
what 5440908 computed for the same request: a retry after the upgrade runs a second time."""

from __future__ import annotations

from typing import Any

import pytest

from idempotent_middleware.http.request import HttpRequest
from idempotent_middleware.wsgi import environ_headers

from . import _apps
from ._apps import BODY

KEY = '[headers."idempotency-key", headers.authorization]'


def _environ() -> dict[str, Any]:
    return _apps.environ(CONTENT_LENGTH=str(len(BODY)), HTTP_AUTHORIZATION="Bearer t-1")


def _environ_of(request: HttpRequest) -> dict[str, Any]:
    raw = request.raw
    return raw if isinstance(raw, dict) else raw.environ  # WSGI environ / Werkzeug request


def _wsgi(scope: Any) -> Any:
    return _apps.wsgi(scope=scope, event_key_jmespath=KEY)


def _flask(scope: Any) -> Any:
    return _apps.flask(IDEMPOTENCY_SCOPE=scope, IDEMPOTENCY_EVENT_KEY_JMESPATH=KEY)


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
