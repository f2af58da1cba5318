"""R4: an exception while the outcome is being settled (before the completion or release is
handed to the store) leaves the lease renewing: ``AsyncExecution._settle`` and
``Execution.record`` stop the lease only on the paths they expect, and ``record`` is marked
done before it runs, so nothing settles the claim again. The key then answers 409 for
``max_lease_hold_seconds`` (an hour by default), then frees for a second run.

Two triggers: a ``store_status`` predicate that raises for a status it did not expect, and
an ASGI app that sends ``str`` headers (h11-based servers accept them): ``StoredResponse
.encode`` fails in ``finish`` and again in the ``except`` that would hand the completion to
the lease (``engine.completion``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)

Message = dict[str, Any]
LEASE = 0.2


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", b"r4")],
    }


async def call(app: Any) -> list[Message]:
    inbox: list[Message] = [{"type": "http.request", "body": b"{}", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    with contextlib.suppress(Exception):  # the server answers 500; the client retries later
        await app(scope(), receive, send)
    return sent


def _picky(status: int) -> bool:
    return {200: True, 201: True, 500: False}[status]  # KeyError for any other status


@pytest.mark.parametrize("trigger", ["store_status", "str_headers"])
def test_r4_asgi_settle_error_blocks_the_key_for_the_hold_cap(trigger: str) -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        headers: list[Any] = [(b"content-type", b"text/plain")]
        if trigger == "str_headers":
            headers = [("content-type", "text/plain")]
        await send({"type": "http.response.start", "status": 418, "headers": headers})
        await send({"type": "http.response.body", "body": b"teapot"})

    config = IdempotencyConfig(
        lease_seconds=LEASE, store_status=_picky if trigger == "store_status" else range(600)
    )
    middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer(), config)

    async def main() -> list[Message]:
        await call(middleware)
        await asyncio.sleep(LEASE * 4)  # several leases later, the client retries
        return await call(middleware)

    retry = asyncio.run(main())
    assert runs == [1]
    body = b"".join(m.get("body", b"") for m in retry if m["type"] == "http.response.body")
    # Every answer but "in progress" is final: the settled record (409 "not replayable" or
    # "interrupted" for a response the store cannot hold, or the response itself).
    assert b"in-progress" not in body, "the key stays claimed, renewed by nobody's handler"
    if trigger == "store_status":  # the policy could not decide: the response is kept
        assert retry[0]["status"] == 418, retry


def test_r4_wsgi_settle_error_blocks_the_key_for_the_hold_cap() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("418 I'm a teapot", [("Content-Type", "text/plain")])
        return [b"teapot"]

    middleware = WSGIIdempotencyMiddleware(
        app, InMemoryPersistenceLayer(), IdempotencyConfig(lease_seconds=LEASE, store_status=_picky)
    )
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/x",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "HTTP_IDEMPOTENCY_KEY": "r4w",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    body = middleware({**environ, "wsgi.input": io.BytesIO(b"{}")}, start_response)
    try:
        list(body)
    finally:
        getattr(body, "close", lambda: None)()
    time.sleep(LEASE * 4)
    again = middleware({**environ, "wsgi.input": io.BytesIO(b"{}")}, start_response)
    replayed = b"".join(again)
    getattr(again, "close", lambda: None)()
    # The app's response went out, and the policy that could not decide keeps it.
    assert statuses[0].startswith("418"), statuses
    assert statuses[-1].startswith("418") and replayed == b"teapot", (statuses, replayed)


def test_r4_flask_header_copy_error_blocks_the_key_for_the_hold_cap() -> None:
    """Flask: ``from_flask`` (``_encoded``: headers to Latin-1) runs outside the ``try`` that
    records the execution, so a header value outside Latin-1 leaves the execution unrecorded
    and its lease renewing."""
    flask = pytest.importorskip("flask")
    from idempotent_middleware.flask import Idempotency

    app = flask.Flask(__name__)
    app.config["IDEMPOTENCY_STORE"] = InMemoryPersistenceLayer()
    app.config["IDEMPOTENCY_LEASE_SECONDS"] = LEASE
    runs: list[int] = []

    @app.post("/orders")
    def orders() -> Any:
        runs.append(1)
        return "made", 201, {"Content-Disposition": 'inline; filename="€.txt"'}

    Idempotency(app)
    client = app.test_client()
    headers = {"Idempotency-Key": "r4f", "Content-Type": "application/json"}
    first = client.post("/orders", data=b"{}", headers=headers)
    assert first.status_code == 201  # the app's response, passed through
    time.sleep(LEASE * 4)
    second = client.post("/orders", data=b"{}", headers=headers)
    assert runs == [1]
    assert second.status_code == 409
    problem = second.get_json()
    assert problem["type"].endswith("not-replayable"), "the key stays claimed by nobody"
