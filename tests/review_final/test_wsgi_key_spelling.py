"""The WSGI pass-through shortcut looks for one environ name; the full path finds more.

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


@pytest.mark.parametrize("key_name", ["HTTP_Idempotency_Key", "HTTP_IDEMPOTENCY-KEY"])
def test_a_key_under_another_environ_spelling_runs_once(key_name: str) -> None:
    log = logging.getLogger("idempotent_middleware")
    level = log.level
    log.setLevel(logging.INFO)  # debug off: the shortcut is taken (under DEBUG it runs once)
    try:
        _two_calls_run_once(key_name)
    finally:
        log.setLevel(level)


def _two_calls_run_once(key_name: str) -> None:
    handler = _App()
    app = WSGIIdempotencyMiddleware(handler, InMemoryPersistenceLayer())
    first = _call(app, key_name)
    second = _call(app, key_name)
    assert handler.runs == 1
    assert first == second == b"1"
