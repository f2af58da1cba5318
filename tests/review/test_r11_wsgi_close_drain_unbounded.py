"""R11: when the server closes a WSGI response early (the client left), ``CapturingIterable
.close`` drains the rest of the app's body into the copy, bounded by ``DRAIN_SECONDS`` only
between chunks: a body that waits for its next chunk (a stream of events, a long poll, a
generator reading a queue) blocks ``close()``, and so the server's worker, until it yields,
possibly forever, with the claim renewed meanwhile. Without the middleware ``close()`` ends
the generator at once. An unauthenticated client pins one worker per request it opens and
drops.
"""

from __future__ import annotations

import io
import threading
from typing import Any

from idempotent_middleware import (
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware.http.execution import DRAIN_SECONDS


def test_r11_close_after_the_client_left_returns_within_the_drain_bound() -> None:
    release = threading.Event()

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events() -> Any:
            yield b"data: first\n\n"
            release.wait()  # the next event comes when something happens (here: test end)
            yield b"data: second\n\n"

        return events()

    middleware = WSGIIdempotencyMiddleware(
        app, InMemoryPersistenceLayer(), IdempotencyConfig(lease_seconds=5)
    )
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/subscribe",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "HTTP_IDEMPOTENCY_KEY": "r11",
        "wsgi.input": io.BytesIO(b"{}"),
    }
    body = middleware(environ, lambda status, headers, exc_info=None: lambda data: None)
    iterator = iter(body)
    assert next(iterator) == b"data: first\n\n"
    # The client leaves; the server stops iterating and closes the response (PEP 3333).
    closer = threading.Thread(target=body.close, daemon=True)
    closer.start()
    closer.join(DRAIN_SECONDS + 3)
    stuck = closer.is_alive()
    release.set()
    closer.join(5)
    assert not stuck, f"close() still blocked after {DRAIN_SECONDS + 3} s: the worker is pinned"
