"""The WSGI pass-through shortcut looked for one environ name; the full path found more.

``environ_headers`` maps any ``HTTP_*`` name to a header by replacing ``_`` with ``-`` and
lower-casing, so ``HTTP_Idempotency_Key`` and ``HTTP_IDEMPOTENCY-KEY`` are the key header
there; the shortcut (``wsgi.IdempotencyMiddleware.__call__`` with ``_key_variable``) tests
only ``HTTP_IDEMPOTENCY_KEY`` and passes such a keyed request through unprotected: a retry
runs the handler again. With a subscriber (the shortcut is skipped) the same requests run
once, so the two paths disagree.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest

from idempotent_middleware import InMemoryPersistenceLayer, WSGIIdempotencyMiddleware


class _App:
    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.runs += 1
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [str(self.runs).encode()]


def _call(app: Any, key_name: str) -> bytes:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/orders",
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "wsgi.input": io.BytesIO(b"{}"),
        key_name: "k-1",
    }

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        return lambda data: None

    return b"".join(app(environ, start_response))


def _runs(key_name: str, *, debug: bool) -> int:
    log = logging.getLogger("idempotent_middleware")
    level = log.level
    # Debug on makes the adapter skip the shortcut and take the full path.
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        handler = _App()
        app = WSGIIdempotencyMiddleware(handler, InMemoryPersistenceLayer())
        _call(app, key_name)
        _call(app, key_name)
        return handler.runs
    finally:
        log.setLevel(level)


@pytest.mark.parametrize("key_name", ["HTTP_Idempotency_Key", "HTTP_IDEMPOTENCY-KEY"])
def test_a_key_under_another_environ_spelling_is_decided_alike_on_both_paths(
    key_name: str,
) -> None:
    """Decided: only the CGI spelling names a header (RFC 3875 4.1.18, PEP 3333), on the
    shortcut and the full path alike; another spelling is no key (what servers never write).
    Before the fix the full path keyed it (1 run) and the shortcut did not (2 runs)."""
    assert _runs(key_name, debug=True) == _runs(key_name, debug=False) == 2


@pytest.mark.parametrize("debug", [True, False])
def test_the_cgi_spelling_is_keyed_on_both_paths(debug: bool) -> None:
    assert _runs("HTTP_IDEMPOTENCY_KEY", debug=debug) == 1
