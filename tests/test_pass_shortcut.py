"""The adapters' pass-through shortcut answers as ``engine.rule`` and ``engine.precheck`` do.

Both adapters decide most pass-throughs from the raw scope or environ, before any request
object exists; each case below is one the shortcut could get wrong: a method in another case,
a key in another spelling, a listener or debug log that wants the pass-through's event, a
required key, path rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    RouteOptions,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware.events import Decision, IdempotencyEvent, subscribe


class Counting:
    """An app (ASGI and WSGI) that counts its runs and answers their number."""

    def __init__(self) -> None:
        self.runs = 0

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        self.runs += 1
        body = str(self.runs).encode()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.runs += 1
        start_response("201 Created", [])
        return [str(self.runs).encode()]


def asgi_call(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if given:
            await asyncio.sleep(3600)
        given = True
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def wsgi_call(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    import io

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "wsgi.input": io.BytesIO(b"{}"),
    }
    for name, value in headers:
        environ["HTTP_" + name.decode().upper().replace("-", "_")] = value.decode()
    status: list[int] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(int(line[:3]))
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return status[0], body


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(kind: str, app: Counting, config: IdempotencyConfig | None = None) -> Any:
    store = InMemoryPersistenceLayer()
    if kind == "asgi":
        return IdempotencyMiddleware(app.asgi, store, config or IdempotencyConfig())
    return WSGIIdempotencyMiddleware(app.wsgi, store, config or IdempotencyConfig())


def call(
    kind: str, middleware: Any, method: str, path: str, key: bytes | None
) -> tuple[int, bytes]:
    headers = [] if key is None else [(b"idempotency-key", key)]
    caller = asgi_call if kind == "asgi" else wsgi_call
    return caller(middleware, method, path, headers)


@pytest.fixture
def events() -> Iterator[list[IdempotencyEvent]]:
    seen: list[IdempotencyEvent] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


@pytest.mark.parametrize("method", ["POST", "post", "Post", "pOsT"])
def test_a_covered_method_in_any_case_is_handled(kind: str, method: str) -> None:
    app = Counting()
    middleware = build(kind, app)
    first = call(kind, middleware, method, "/x", b"k")
    assert call(kind, middleware, method, "/x", b"k") == first
    assert app.runs == 1


@pytest.mark.parametrize("method", ["GET", "get", "DELETE", "BREW"])
def test_an_uncovered_method_runs_every_time(kind: str, method: str) -> None:
    app = Counting()
    middleware = build(kind, app)
    call(kind, middleware, method, "/x", b"k")
    call(kind, middleware, method, "/x", b"k")
    assert app.runs == 2


def test_no_key_runs_every_time_and_a_listener_hears_it(
    kind: str, events: list[IdempotencyEvent]
) -> None:
    app = Counting()
    middleware = build(kind, app)
    call(kind, middleware, "post", "/x", None)
    call(kind, middleware, "POST", "/x", None)
    assert app.runs == 2
    assert [(e.decision, e.method) for e in events] == [
        (Decision.NO_KEY, "POST"),
        (Decision.NO_KEY, "POST"),
    ]


def test_no_key_is_logged_when_debug_is_on(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    app = Counting()
    middleware = build(kind, app)
    call(kind, middleware, "POST", "/x", None)  # debug off: the level's answer is memoised
    with caplog.at_level(logging.DEBUG, logger="idempotent_middleware"):
        call(kind, middleware, "POST", "/x", None)
    call(kind, middleware, "POST", "/x", None)
    assert app.runs == 3
    assert [r.getMessage() for r in caplog.records] == [
        "pass POST unmatched: no key"
    ]  # the route label, never the raw path


def test_a_required_key_is_still_required(kind: str) -> None:
    app = Counting()
    middleware = build(kind, app, IdempotencyConfig(raise_on_no_idempotency_key=True))
    assert call(kind, middleware, "post", "/x", None)[0] == 400
    assert app.runs == 0


def test_path_rules_still_decide(kind: str) -> None:
    app = Counting()
    config = IdempotencyConfig(
        exclude_paths=("/health*",),
        routes={"/strict/*": RouteOptions(raise_on_no_idempotency_key=True)},
    )
    middleware = build(kind, app, config)
    call(kind, middleware, "POST", "/health", b"k")
    call(kind, middleware, "POST", "/health", b"k")
    assert app.runs == 2  # excluded: the key is ignored
    assert call(kind, middleware, "POST", "/strict/1", None)[0] == 400
    assert call(kind, middleware, "POST", "/other", None)[0] == 201
    first = call(kind, middleware, "POST", "/other", b"k")
    assert call(kind, middleware, "POST", "/other", b"k") == first
    assert app.runs == 4


def test_a_key_header_in_another_spelling_is_found() -> None:
    """ASGI servers lower-case header names; WSGI servers write HTTP_ + upper case."""
    app = Counting()
    config = IdempotencyConfig(header_name="X-Request-ID")
    asgi = IdempotencyMiddleware(app.asgi, InMemoryPersistenceLayer(), config)
    first = asgi_call(asgi, "POST", "/x", [(b"x-request-id", b"k")])
    assert asgi_call(asgi, "POST", "/x", [(b"x-request-id", b"k")]) == first
    wsgi = WSGIIdempotencyMiddleware(app.wsgi, InMemoryPersistenceLayer(), config)
    first = wsgi_call(wsgi, "POST", "/x", [(b"X-Request-Id", b"k")])
    assert wsgi_call(wsgi, "POST", "/x", [(b"x-request-id", b"k")]) == first
    assert app.runs == 2
